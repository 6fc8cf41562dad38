"""The one place that talks to MLflow: the store (:mod:`.store`: experiments, runs with retries,
search, the recorded plans) and a job's run from open to close (:mod:`.runs`, imported by the jobs
only: it needs torch)."""

from quantbench.tracking.store import Tracker, check_server, experiment_store, resolve_tracking_uri, with_retry

__all__ = ["Tracker", "check_server", "experiment_store", "resolve_tracking_uri", "with_retry"]
