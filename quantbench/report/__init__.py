"""Reporting: the record (MLflow runs and their per-example results) read into tables, plots,
claims, comparisons and variance (no job runs here, no method is called)."""
