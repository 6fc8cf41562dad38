"""The one place that talks to MLflow: experiments, runs (with retries), and run search.

Default store: ``sqlite:///<results_dir>/mlflow.db``; ``MLFLOW_TRACKING_URI`` overrides the
config's ``tracking_uri``, which overrides the default. SQLite serialises writers: parallel
jobs retry a write that meets a locked database, and the database and experiment are created
once, before the grid (rule ``tracking``), so no two jobs run MLflow's schema migrations at once.
Each run is written in a handful of calls at its end (create, batched params/metrics,
artifacts, terminate), so a job holds the write lock only briefly.

A tracking server (``http(s)://``; docs/cluster.md) is checked when a job starts (:func:`check_server`:
a few tries within seconds, then an error naming the URI: unreachable, or credentials refused).
Later calls ride out a server restart with MLflow's own bounded retries (connection errors and
the transient statuses 408, 429, 500, 502-504; ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` = 7 and
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` = 2 by default: about 4 minutes). Every call but run creation
is idempotent; a creation that the client retried after the server had already written it would
leave a twin, so each run carries a one-off ``attempt`` tag and :meth:`Tracker.start_run` keeps
exactly one run per attempt. Credentials come from ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` (or ``MLFLOW_TRACKING_TOKEN``), read by MLflow itself.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import tenacity

from quantbench.errors import TrackingError

T = TypeVar("T")
TRANSIENT = ("database is locked", "database table is locked", "unable to open database", "disk i/o error")


SERVER_TRANSIENT = (408, 429, 500, 502, 503, 504)


def check_server(uri: str, attempts: int = 4, timeout: float = 5.0) -> None:
    """For an ``http(s)://`` tracking URI: one authenticated read (search one experiment), tried
    ``attempts`` times with 1, 2, 4 … s between tries (at most ~30 s in all by default), so a job
    fails at its start, naming the URI, instead of computing for hours and failing at its end.
    Other URIs (a SQLite file, a directory) pass."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    user, token = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_TOKEN")
    auth = (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", "")) if user and not token else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    who = f"user {user!r}" if user else ("a token" if token else "no credentials")
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search"
    t0, problem = time.monotonic(), ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(2 ** (attempt - 1))
        try:
            response = requests.get(url, params={"max_results": 1}, auth=auth, headers=headers, timeout=timeout)
        except requests.RequestException as e:
            problem = f"{type(e).__name__}: {e}"
            continue
        if response.status_code == 401:
            raise TrackingError(f"the MLflow tracking server at {uri} refused {who} (HTTP 401); set "
                                f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account it knows")
        if response.status_code == 403:
            raise TrackingError(f"the MLflow tracking server at {uri} does not let {who} read (HTTP 403)")
        if response.status_code in SERVER_TRANSIENT:
            problem = f"HTTP {response.status_code}"
            continue
        if response.status_code != 200:
            raise TrackingError(f"{url} answered HTTP {response.status_code}: is {uri} an MLflow tracking server? "
                                f"{response.text[:200]}")
        return
    raise TrackingError(f"the MLflow tracking server at {uri} is unreachable ({attempts} tries in "
                        f"{time.monotonic() - t0:.0f} s; last: {problem}); start it, or set MLFLOW_TRACKING_URI")


def resolve_tracking_uri(configured: str | None, results_dir: str | Path) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    return f"sqlite:///{(Path(results_dir) / 'mlflow.db').resolve()}"


def _busy(e: BaseException) -> bool:
    """A store-busy error (MLflow wraps sqlite's in MlflowException: matched by message)."""
    return any(t in str(e).lower() for t in TRANSIENT)


def with_retry(fn: Callable[..., T], *args: Any, attempts: int = 12, **kwargs: Any) -> T:
    """Call ``fn``, retrying while the store is busy: up to ``attempts`` calls, the k-th wait (k = 0, 1, …)
    x/2 + U[0, x] s with x = min(10, 0.1 · 2^k), jittered exponential backoff; any other error, or the
    last busy one, is raised as it is."""
    wait = (tenacity.wait_exponential(multiplier=0.05, max=5.0)
            + tenacity.wait_random_exponential(multiplier=0.1, max=10.0))
    retrying = tenacity.Retrying(retry=tenacity.retry_if_exception(_busy), stop=tenacity.stop_after_attempt(attempts),
                                 wait=wait, reraise=True)
    return retrying(fn, *args, **kwargs)


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Tracker:
    """MLflow client bound to one tracking URI."""

    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        check_server(uri)
        # no progress bar per artifact download (the tables read one examples.npz per run); the user's setting wins
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.uri = uri
        self.client = with_retry(MlflowClient, tracking_uri=uri)

    def ensure_experiment(self, name: str, artifact_root: Path | None = None) -> str:
        """The experiment's id, creating it (once) when missing."""
        exp = with_retry(self.client.get_experiment_by_name, name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if artifact_root is not None and self.uri.startswith("sqlite:"):
            location = (Path(artifact_root).resolve() / name).as_uri()
        try:
            return with_retry(self.client.create_experiment, name, artifact_location=location)
        except Exception as e:
            if "already exists" not in str(e).lower():
                raise
            return with_retry(self.client.get_experiment_by_name, name).experiment_id

    def start_run(self, experiment_id: str, run_name: str, params: dict[str, str], tags: dict[str, str]) -> str:
        """Open a run (status RUNNING) with its params and tags; returns its id. Exactly one run is
        left per call, even when the client retried the creation (see the module docstring)."""
        from mlflow.entities import Param

        attempt = uuid.uuid4().hex
        tags = {**tags, "attempt": attempt}
        try:
            run_id = with_retry(self.client.create_run, experiment_id, run_name=run_name,
                                tags={k: str(v)[:5000] for k, v in tags.items()}).info.run_id
        except Exception as e:
            if not self.uri.startswith(("http://", "https://")):
                raise
            found = self._attempt_runs(experiment_id, attempt)
            if not found:
                raise TrackingError(f"cannot open a run at {self.uri}: {e}") from e
            run_id = found[0]
        for twin in self._attempt_runs(experiment_id, attempt):
            if twin != run_id:
                with_retry(self.client.delete_run, twin)
        for chunk in _chunks([Param(k, v[:6000]) for k, v in params.items()], 100):
            with_retry(self.client.log_batch, run_id, params=chunk)
        return run_id

    def _attempt_runs(self, experiment_id: str, attempt: str) -> list[str]:
        found = with_retry(self.client.search_runs, [experiment_id], filter_string=f"tags.attempt = '{attempt}'",
                           order_by=["attributes.start_time ASC"])
        return [r.info.run_id for r in found]

    def finish_run(self, run_id: str, metrics: dict[str, float], step_metrics: list[tuple[str, float, int]],
                   tags: dict[str, str], artifacts: list[Path], status: str = "FINISHED") -> None:
        """Log the outcome and close the run. ``status``: FINISHED, FAILED or KILLED."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        metric_rows = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        metric_rows += [Metric(k, float(v), now, s) for k, v, s in step_metrics]
        for chunk in _chunks(metric_rows, 1000):
            with_retry(self.client.log_batch, run_id, metrics=chunk)
        tag_rows = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for chunk in _chunks(tag_rows, 100):
            with_retry(self.client.log_batch, run_id, tags=chunk)
        for path in artifacts:
            if Path(path).is_file():
                with_retry(self.client.log_artifact, run_id, str(path))
        with_retry(self.client.set_terminated, run_id, status=status)

    def is_running(self, run_id: str) -> bool:
        """Whether the run is still open (RUNNING)."""
        return with_retry(self.client.get_run, run_id).info.status == "RUNNING"

    def close_abandoned(self, experiment_id: str, cell_id: str) -> list[str]:
        """Mark KILLED the runs of ``cell_id`` still RUNNING: their job died without closing them
        (SIGKILL, node failure, out of memory). Called when the cell starts again."""
        from mlflow.entities import RunStatus

        found = with_retry(self.client.search_runs, [experiment_id],
                           filter_string=f"tags.cell_id = '{cell_id}' and attributes.status = 'RUNNING'")
        for run in found:
            with_retry(self.client.set_tag, run.info.run_id, "status", "killed")
            with_retry(self.client.set_tag, run.info.run_id, "failure_reason",
                       "the job ended without closing its run (killed); found when the cell was run again")
            with_retry(self.client.set_terminated, run.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))
        return [r.info.run_id for r in found]

    def finished_run(self, experiment_id: str, cell_id: str, tags: dict[str, str]) -> str | None:
        """The id of the latest run of ``cell_id`` when it is FINISHED and carries every tag in
        ``tags``; None otherwise (no run, or the latest failed, was killed or differs)."""
        found = with_retry(self.client.search_runs, [experiment_id], filter_string=f"tags.cell_id = '{cell_id}'",
                           order_by=["attributes.start_time DESC"], max_results=1)
        if not found or found[0].info.status != "FINISHED":
            return None
        if any(found[0].data.tags.get(k) != v for k, v in tags.items()):
            return None
        return found[0].info.run_id

    def download_artifacts(self, run_id: str, names: list[str], into: Path) -> list[Path] | None:
        """The run's artifacts ``names`` copied into ``into``; None when one is missing."""
        have = {f.path for f in with_retry(self.client.list_artifacts, run_id)}
        if not set(names) <= have:
            return None
        return [Path(with_retry(self.client.download_artifacts, run_id, name, str(into))) for name in names]

    def artifact_file(self, run_id: str, artifact_uri: str, name: str, into: Path) -> Path | None:
        """The run's artifact ``name`` as a local file: read in place when the run's artifacts are
        local files (a sqlite store's ``mlartifacts/``), else downloaded into ``into``; None when
        the run has no such artifact."""
        parsed = urlparse(str(artifact_uri))
        if parsed.scheme == "file":
            path = Path(unquote(parsed.path)) / name
            return path if path.is_file() else None
        found = self.download_artifacts(run_id, [name], into)
        return found[0] if found else None

    def metric_histories(self, run_ids: list[str], keys: list[str]) -> list[tuple[str, str, int, float]]:
        """``(run_id, key, step, value)`` of every logged value (``search_runs`` keeps only the last)."""
        rows = []
        for run_id in run_ids:
            for key in keys:
                for m in with_retry(self.client.get_metric_history, run_id, key):
                    rows.append((run_id, key, m.step, m.value))
        return rows

    def record_plan(self, experiment_id: str, plan_file: Path, sha256: str) -> tuple[str, bool]:
        """Record a grid's plan in its experiment: a run tagged ``kind=plan`` and ``plan_sha256`` with the
        file as its artifact (no ``cell_id``: the tables' cells ignore it). A plan recorded before is
        not recorded again. Returns the run's id and whether it is new."""
        found = with_retry(self.client.search_runs, [experiment_id],
                           filter_string=f"tags.kind = 'plan' and tags.plan_sha256 = '{sha256}' and "
                                         f"attributes.status = 'FINISHED'", max_results=1)
        if found:
            return found[0].info.run_id, False
        import shutil
        import tempfile

        run_id = self.start_run(experiment_id, "plan", {}, {"kind": "plan", "plan_sha256": sha256})
        with tempfile.TemporaryDirectory(prefix="quantbench-plan-") as staging:  # recorded as plan.json
            shutil.copyfile(plan_file, Path(staging) / "plan.json")
            self.finish_run(run_id, {}, [], {}, [Path(staging) / "plan.json"])
        return run_id, True

    def plans(self, experiment: str, into: Path) -> list[tuple[str, Path]]:
        """``(run id, plan file)`` of every plan recorded in ``experiment``, the newest first; the
        files are read in place or downloaded into ``into``."""
        exp = with_retry(self.client.get_experiment_by_name, experiment)
        if exp is None:
            return []
        found = with_retry(self.client.search_runs, [exp.experiment_id],
                           filter_string="tags.kind = 'plan' and attributes.status = 'FINISHED'",
                           order_by=["attributes.start_time DESC"], max_results=1000)
        files = [(r.info.run_id, self.artifact_file(r.info.run_id, r.info.artifact_uri, "plan.json",
                                                    into / r.info.run_id)) for r in found]
        return [(run_id, path) for run_id, path in files if path is not None]

    def runs(self, experiment: str):
        """All runs of ``experiment`` as a pandas DataFrame (``mlflow.search_runs``)."""
        import mlflow

        if with_retry(self.client.get_experiment_by_name, experiment) is None:
            raise LookupError(f"no MLflow experiment {experiment!r} at {self.uri}")
        before = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)  # search_runs reads the global URI (and MLflow exports it)
        try:
            return with_retry(mlflow.search_runs, experiment_names=[experiment], output_format="pandas",
                              max_results=100_000)
        finally:
            mlflow.set_tracking_uri(before)


def experiment_store(context) -> tuple[Tracker, str]:
    """The store and the experiment's id of a grid's ``context`` (a :class:`quantbench.jobs.spec.JobContext`:
    its experiment, results dir and tracking URI), the experiment created once when missing."""
    results = Path(context.results_dir)
    tracker = Tracker(resolve_tracking_uri(context.tracking_uri, results))
    return tracker, tracker.ensure_experiment(context.experiment, results / "mlartifacts")
