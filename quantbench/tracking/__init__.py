"""The one place that talks to MLflow: the store (:mod:`.store`: experiments, runs with retries,
search, the recorded plans). A job's run from open to close is the jobs' (:mod:`quantbench.jobs.runs`)."""

from quantbench.tracking.store import Tracker, check_server, experiment_store, resolve_tracking_uri, with_retry

__all__ = ["Tracker", "check_server", "experiment_store", "resolve_tracking_uri", "with_retry"]
