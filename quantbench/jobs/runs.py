"""A job's MLflow run, from open to close: what it records about where and with what it ran (tags),
and its outcome whatever happens (FINISHED with ``status=ok``, or with ``status=diverged`` for a
cell whose method diverged; FAILED with ``status=failed`` (or ``diverged`` for a reference); KILLED).

:func:`open_run` closes runs of the cell left RUNNING by a dead job, then opens this job's run
(its params: the identity, flattened). :func:`recorded` closes it when the job's body does not
complete: a divergence of a cell (a :class:`FloatingPointError`: non-finite training loss,
weights or test metrics) is the cell's result, written to its ``metrics.json`` and raised as
:class:`Diverged` for the job to exit 0; any other error FAILED; SIGTERM/SIGINT (arriving as
:class:`Terminated`) KILLED. :func:`finish` closes it FINISHED with its files and publishes the
job's output last. In a job of several processes rank
0 alone has a run; a rank stopped by a signal under torchrun leaves its run to the launcher,
which knows whether a rank failed or the job was cancelled (:func:`close_left_running`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import signal
import subprocess
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from quantbench import distributed
from quantbench.errors import JobFailed
from quantbench.examples import EXAMPLES_FILE, Examples
from quantbench.files import write_json_atomic
from quantbench.jobs.spec import JobSpec
from quantbench.tracking.store import Tracker, experiment_store

log = logging.getLogger("quantbench")
PACKAGES = ("quantbench", "torch", "torchvision", "timm", "fairseq", "fairseq-fixed", "mlflow", "snakemake", "numpy")


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}} -> {"a.b": "1"}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)
    return out


def environment_tags() -> dict[str, str]:
    """Git commit, package versions and device, attached to every run (read once per process)."""
    return dict(_environment_tags())


@functools.cache
def _environment_tags() -> dict[str, str]:
    tags = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            tags[f"version.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        repo = Path(__file__).resolve().parent.parent
        tags["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        tags["git_commit"] = "unknown"
    return tags


@functools.cache
def _distributions(top_module: str) -> list[str]:
    """The installed distributions that provide ``top_module``: the one of the same name when
    there is one (quantbench itself: instant), else from ``packages_distributions`` (a scan of
    every installed distribution, ~2 s here: once per process, not once per cell)."""
    try:
        dist = metadata.distribution(top_module)
    except metadata.PackageNotFoundError:
        return metadata.packages_distributions().get(top_module, [])
    return [dist.metadata["Name"]]


def method_tags(method_cls: type) -> dict[str, str]:
    """The code a cell ran: the method's module, and the installed distribution that provides it
    (``quantbench`` for the built-ins, the plugin's package otherwise) with its version."""
    module = method_cls.__module__
    dists = _distributions(module.partition(".")[0])
    tags = {"method_module": f"{module}.{method_cls.__qualname__}"}
    if dists:
        tags["method_package"] = dists[0]
        try:
            tags["method_version"] = metadata.version(dists[0])
        except metadata.PackageNotFoundError:
            pass
    return tags


class Diverged(Exception):  # noqa: N818 (an outcome, not an error)
    """A cell's method diverged: its run is closed FINISHED with ``status=diverged`` and
    ``result`` (its ``metrics.json``) is written; the job exits 0 and its other cells go on."""

    def __init__(self, result: dict) -> None:
        super().__init__(result.get("reason", "diverged"))
        self.result = result


class Terminated(BaseException):
    """SIGTERM/SIGINT arrived: the run is closed KILLED and the job exits 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


@contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Turn SIGTERM/SIGINT into :class:`Terminated` (SLURM sends SIGTERM on cancel/timeout)."""
    def handler(signum, frame):
        raise Terminated(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def open_run(spec: JobSpec, tags: dict, tracker: tuple[Tracker, str] | None = None) -> tuple | None:
    """Close runs of this cell left RUNNING by a dead job, then open this job's run with ``tags``.
    Its params are the identity, flattened; the context goes into tags (where it ran, not what it is).
    Rank 0 only (``None`` on the other ranks); under a launcher it also writes the run's id to
    the file the launcher named (:data:`~quantbench.distributed.RUN_ID_FILE_ENV`)."""
    if not distributed.is_main():
        return None
    tracker, exp_id = tracker or experiment_store(spec.context)
    cell_id = spec.identity.cell_id
    stale = tracker.close_abandoned(exp_id, cell_id)
    if stale:
        log.warning("%s: marked %d run(s) left RUNNING by an earlier, killed job as KILLED", cell_id, len(stale))
    tags = {**tags, "results_dir": spec.context.results_dir, "data_root": spec.context.data_root}
    if distributed.world_size() > 1:
        tags["processes"] = str(distributed.world_size())
    run_id = tracker.start_run(exp_id, cell_id, flatten(spec.identity.as_dict()), tags)
    if os.environ.get(distributed.RUN_ID_FILE_ENV):
        Path(os.environ[distributed.RUN_ID_FILE_ENV]).write_text(run_id)
    return tracker, run_id, cell_id


def close_left_running(spec: JobSpec, run_id_file: Path, status: str, reason: str) -> str | None:
    """The launcher's part: close the run rank 0 opened (its id in ``run_id_file``) as ``status``
    (FAILED: ``status=failed``; KILLED: ``status=killed``) with ``reason``, when rank 0 left it
    RUNNING; returns its id, or None when there is nothing to close (rank 0 closed it, or never
    opened one)."""
    if not run_id_file.is_file():
        return None
    run_id = run_id_file.read_text().strip()
    tracker, _ = experiment_store(spec.context)
    if not tracker.is_running(run_id):
        return None
    tags = {"status": {"FAILED": "failed", "KILLED": "killed"}[status], "failure_reason": reason}
    tracker.finish_run(run_id, {}, [], tags, [], status)
    return run_id


@contextmanager
def recorded(run: tuple, log_file: Path | None, step_metrics, outcome: Path | None = None) -> Iterator[None]:
    """Close the run when the body does not complete. A divergence (:class:`FloatingPointError`) is
    the job's result when ``outcome`` (its ``metrics.json``) is given: the run is closed FINISHED
    with ``status=diverged`` and the reason as ``diverged_at``, ``outcome`` is written with
    ``status: diverged``, and :class:`Diverged` carries that result out (on every rank: the job
    exits 0); without ``outcome`` (a reference: its cells cannot run) it is closed FAILED with
    ``status=diverged`` and the job fails. Any other error: FAILED; a signal: KILLED. Without a run
    (a rank other than 0) the body's errors pass through unrecorded."""
    if run is None:
        try:
            with signals_as_exceptions():
                yield
        except FloatingPointError as e:
            if getattr(e, "all_ranks", False):  # rank 0 records it first: torchrun would stop it when this one exits
                distributed.barrier()
            if outcome is not None:
                raise Diverged({"status": "diverged", "reason": str(e), "rank": distributed.rank()}) from None
            raise
        except Terminated as e:
            raise SystemExit(128 + e.signum) from None
        return
    tracker, run_id, cell_id = run
    logs = [log_file] if log_file else []
    try:
        with signals_as_exceptions():
            yield
    except FloatingPointError as e:
        if outcome is None:
            tags = {"status": "diverged", "failure_reason": str(e)}
            tracker.finish_run(run_id, {}, step_metrics(), tags, logs, "FAILED")
        else:  # the reason says where: "training loss is nan at epoch 0 of LC step 11 (mu 4.1)"
            result = finish(run, {"status": "diverged", "reason": str(e), "cell_id": cell_id}, outcome, {},
                            step_metrics(), logs, {"status": "diverged", "diverged_at": str(e)})
            log.warning("%s diverged: %s; recorded as its result (run %s)", cell_id, e, run_id)
        if getattr(e, "all_ranks", False):  # recorded: the other ranks, waiting here, may exit now
            distributed.barrier()
        if outcome is None:
            raise JobFailed(f"{cell_id} diverged: {e}") from None
        raise Diverged(result) from None
    except Terminated as e:
        if distributed.launched_by_torchrun():  # a failed rank or a cancel: the launcher knows which
            log.error("%s: %s; run %s left to the launcher to close", cell_id, e, run_id)
            raise SystemExit(128 + e.signum) from None
        tracker.finish_run(run_id, {}, step_metrics(), {"status": "killed", "failure_reason": str(e)}, logs, "KILLED")
        log.error("%s: %s; run %s closed as KILLED", cell_id, e, run_id)
        raise SystemExit(128 + e.signum) from None
    except Exception as e:
        tracker.finish_run(run_id, {}, step_metrics(), {"status": "failed",
                                                        "failure_reason": f"{type(e).__name__}: {e}"}, logs, "FAILED")
        log.error("%s failed:\n%s", cell_id, traceback.format_exc())
        raise


def finish(run: tuple, result: dict, out: Path, metrics: dict, step_metrics: list,
            artifacts: list[Path | None], tags: dict | None = None, examples: Examples | None = None) -> dict:
    """Close the run FINISHED (with ``metrics.json`` and the evaluation's per-example results,
    ``examples.npz``, among its artifacts, ``tags`` added: ``status=ok`` unless they say
    otherwise, as a divergence's do), then publish ``out``."""
    tracker, run_id, _ = run
    result["run_id"] = run_id
    with tempfile.TemporaryDirectory(prefix="quantbench-") as staging:  # outside the job's outputs
        attached = [write_json_atomic(result, Path(staging) / out.name)]
        if examples is not None:  # evidence: its sha256 is recorded with the run, and checked when read
            attached.append(examples.save(Path(staging) / EXAMPLES_FILE))
            tags = {**(tags or {}), "test_split_sha256": examples.split["order_sha256"],
                    "examples_sha256": hashlib.sha256(attached[-1].read_bytes()).hexdigest()}
        tracker.finish_run(run_id, metrics, step_metrics, {"status": "ok", **(tags or {})},
                           attached + [a for a in artifacts if a])
    write_json_atomic(result, out)
    return result
