"""One Snakemake job = one function here: train/load a reference, or run one grid cell.

A cell: open its MLflow run (RUNNING), load the reference, ``method.compress`` it, pack the
result to ``model.qbc``, read the file back and check it equals the method's records bit for bit
(failing the cell with the tensor's name otherwise) and pays only for levels its codes can address,
rebuild a fresh network **from that file**, check every weight is on its codebook, evaluate it,
close the run, and finally write ``metrics.json`` atomically (the Snakemake output; it appears
only when everything before it succeeded).

Outcomes (the run's lifecycle: :mod:`quantbench.jobs.runs`): FINISHED (``status=ok``) and
``metrics.json``; a cell whose method diverged (a non-finite training loss, non-finite weights in
what it returns, caught before packing, or non-finite test metrics): FINISHED with
``status=diverged`` and where, ``metrics.json`` saying so and no ``model.qbc``, exit 0 (a result:
the job and the other cells go on); a reference that diverges, or any error (bad input, a bug,
out of memory, a damaged reference): FAILED with ``status=diverged|failed`` and the reason, and the
job exits non-zero; SIGTERM/SIGINT (a cancelled or timed-out job): KILLED (``status=killed``),
exit 128 + signal.

A job of several processes (torchrun, :mod:`quantbench.distributed`): every rank trains; rank 0
alone opens and closes the run and writes the outputs; a post-training method runs on rank 0
alone.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from quantbench import distributed
from quantbench.data import Pipeline, build_task
from quantbench.examples import chance_level
from quantbench.files import write_atomic, write_json_atomic
from quantbench.format import CompressedModel
from quantbench.jobs.runs import (
    Diverged,
    environment_tags,
    finish,
    method_tags,
    open_run,
    recorded,
)
from quantbench.jobs.spec import JobSpec, content_hash
from quantbench.method import Budget, ConfigError, JobFailed, RunContext, make_params
from quantbench.methods import get_method
from quantbench.models import build_model
from quantbench.models.pretrained import eval_transform, load_pretrained, preprocessing
from quantbench.tracking import Tracker, experiment_store
from quantbench.training.loop import (
    TrainSettings,
    file_sha256,
    load_checkpoint,
    reference_key,
    save_checkpoint,
    seed_everything,
    train,
)

log = logging.getLogger("quantbench")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def _setup(spec: JobSpec, threads: int) -> tuple:
    """The task (its test split preprocessed as the reference's published weights declare, for the
    reference and its cells alike), the builder kwargs and this process's device; joins the process
    group in a job of several processes (whose ``threads`` are shared by the processes on a node)."""
    job, where = spec.identity, spec.context
    device = distributed.init(pick_device(where.device))
    threads = max(1, threads // distributed.local_processes())
    torch.set_num_threads(threads)
    seed_everything(job.seed)
    task = build_task(job.task, root=where.data_root, download=where.download, **job.task_params)
    task.pipeline = Pipeline(**{"workers": max(0, threads - 1), **where.loaders.get(job.task, {})})
    source = job.train.get("pretrained", "")
    declared = preprocessing(source, f"{job.cell_id}: train")
    if declared != job.eval_transform:  # a plan made before, or by hand: its numbers would not be what it says
        raise ConfigError(f"{job.cell_id}: eval_transform {job.eval_transform} is not the preprocessing the weights "
                          f"{source or '(none: trained)'} declare, {declared}; plan the job again")
    if declared is not None:
        task.use_eval_transform(eval_transform(source, task.input_shape[-2:]), f"the weights {source}")
        log.info("%s: test split preprocessed as the weights %s declare: %s", job.cell_id, source,
                 json.dumps(declared, sort_keys=True))
    arch_kwargs = {"input_shape": list(task.input_shape), "num_classes": task.num_classes, **job.arch_params}
    return task, arch_kwargs, device


@functools.cache
def code_sha256(method_cls: type) -> str:
    """sha256 of the code a cell runs: the sources of quantbench (its methods and models with it)
    and of the method's own module (a plugin's), read once per process (the code it loaded). A
    cell restored from its record (:func:`_restore`) must have run this very code."""
    import importlib.util
    import inspect

    files = set()
    for package in ("quantbench", "quantbench.methods", "quantbench.models"):
        for root in importlib.util.find_spec(package).submodule_search_locations or []:
            files.update(Path(root).rglob("*.py"))
    files.add(Path(inspect.getsourcefile(method_cls)))
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(str(f.name).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()


def _restore(tracker: Tracker, exp_id: str, spec: JobSpec, tags: dict[str, str], out: Path,
             artifact: Path) -> dict | None:
    """A cell of a batch job whose latest run is FINISHED with this identity, device, reference
    checkpoint and code (``tags``) is not computed again: its recorded ``metrics.json`` and artifact (checked against
    the sha256 it recorded) are written back as the outputs and its run stays the cell's one run.
    A diverged cell's run is its result too: its ``metrics.json`` alone comes back. This is how a
    batch job (config ``batch``) reruns only its failed cells, whether Snakemake kept the outputs
    of the failed job (``keep-incomplete``, the profiles' setting) or removed them: the record keeps
    them. None when there is nothing to restore."""
    cell_id = spec.identity.cell_id
    run_id = tracker.finished_run(exp_id, cell_id, tags)
    if run_id is None:
        return None
    with tempfile.TemporaryDirectory(prefix="quantbench-restore-") as staging:
        files = tracker.download_artifacts(run_id, [out.name], Path(staging))
        result = json.loads(files[0].read_text()) if files else {}
        if result.get("status") == "ok":
            files = tracker.download_artifacts(run_id, [artifact.name], Path(staging))
            if files is None or file_sha256(files[0]) != result.get("artifact_sha256"):
                log.warning("%s: run %s's recorded model does not match its sha256; computing the cell again",
                            cell_id, run_id)
                return None
            write_atomic(artifact, lambda tmp: shutil.copyfile(files[0], tmp))
        elif result.get("status") != "diverged":
            return None
    write_json_atomic(result, out)
    log.info("%s: restored from its finished run %s (same identity, reference and code); not computed again",
             cell_id, run_id)
    return result


def _tags(spec: JobSpec, device: torch.device, task) -> dict:
    """The tags a job's run opens with (``status=running``; the outcome adds its own)."""
    job = spec.identity
    tags = {**environment_tags(), "kind": job.kind, "cell_id": job.cell_id, "task": job.task,
            "metric": task.metric, "higher_is_better": str(task.higher_is_better).lower(), "arch": job.arch,
            "seed": str(job.seed), "device": str(device), "config_hash": job.digest()[:16],
            "status": "running", "family": "reference"}
    if getattr(task, "num_classes", None):  # a uniform guess's metric: the tables count collapsed seeds by it
        tags["chance"] = f"{chance_level(task.metric, task.num_classes):.6g}"
    if job.kind == "cell":
        method = get_method(job.method)
        tags.update(method=job.method, budget=f"{job.budget:g}", family=method.family, **method_tags(method),
                    method_params=json.dumps(job.method_params, sort_keys=True))
        if "@" in job.method:
            tags["variant"] = job.method.partition("@")[2]
        if method.starts_from:
            tags["starts_from"] = method.starts_from
    paper = spec.context.paper_value(job)
    if paper is not None:
        tags.update(paper_value=f"{paper:g}", paper_source=spec.context.paper_source)
    return tags


def train_settings(spec: JobSpec) -> TrainSettings:
    """The reference recipe of the job's identity, checked as planning checked it."""
    return make_params(TrainSettings, spec.identity.train, f"{spec.identity.cell_id}: train")


def checkpoint_path(spec: JobSpec) -> tuple[Path, str]:
    """Content-addressed location of the reference checkpoint for ``spec``."""
    job = spec.identity
    key = reference_key(job.task, job.task_params, job.arch, job.arch_params, job.seed, train_settings(spec))
    digest = content_hash(key)
    return Path(spec.context.results_dir) / "cache" / "references" / f"{digest}.pt", digest


def run_reference(spec: JobSpec, out: Path, log_file: Path | None = None, threads: int = 1,
                  show_progress: bool = True) -> dict:
    """Train the reference, load its published weights (a ``pretrained`` recipe), or reuse the
    cached checkpoint; evaluate, record, write ``out``. The checkpoint cache holds the result
    either way, and cells read it from there."""
    task, arch_kwargs, device = _setup(spec, threads)
    job = spec.identity
    settings = train_settings(spec)
    model = build_model(job.arch, **arch_kwargs)
    ckpt, digest = checkpoint_path(spec)
    cell_id = job.cell_id
    run = open_run(spec, _tags(spec, device, task))
    history: list[float] = []
    weights = None
    t0 = time.perf_counter()
    with recorded(run, log_file, lambda: []):
        sidecar = ckpt.with_name(ckpt.name + ".sha256")
        sha = file_sha256(ckpt) if ckpt.is_file() and sidecar.is_file() else None
        cached = distributed.on_main(lambda: sha is not None and sidecar.read_text().strip() == sha)
        if not distributed.is_main():  # the other ranks take part in the training, and only there
            if not (settings.pretrained or cached):
                train(model, task, settings, job.seed, device, show_progress=False)
            return {"status": "ok", "cell_id": cell_id, "rank": distributed.rank()}
        if settings.pretrained:  # the published file is the source of truth: always read and checked
            weights = load_pretrained(model, settings.pretrained, settings.pretrained_sha256, spec.context.download)
            log.info("reference %s: pretrained %s (%s, sha256 %s)", cell_id, weights.source, weights.file,
                     weights.sha256)
        elif cached:
            log.info("reference %s: cached checkpoint %s", cell_id, ckpt)
            load_checkpoint(ckpt, model)
        else:
            if ckpt.is_file():
                log.warning("reference %s: cached checkpoint %s does not match its sha256; retraining", cell_id, ckpt)
            log.info("reference %s: training %s", cell_id, job.train)
            history = train(model, task, settings, job.seed, device, show_progress)
        if not cached:
            sidecar.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint({k: v.cpu() for k, v in model.state_dict().items()}, ckpt)
            sha = file_sha256(ckpt)
            sidecar.write_text(sha + "\n")
        t_train = time.perf_counter() - t0
        metrics, examples = task.evaluate_examples(model.to(device), device=device)
        _check_finite(metrics)
    n_params = sum(p.numel() for p in model.parameters())
    result = {"status": "ok", "reason": "", "cell_id": cell_id, "checkpoint": str(ckpt), "hash": digest,
              "checkpoint_sha256": sha, "cached": cached, "metric": task.metric,
              "metrics": metrics, "n_params": n_params, "size_bits": 32 * n_params, "time_train_s": t_train}
    tags = {}
    if weights is not None:
        result["pretrained"] = dataclasses.asdict(weights)
        tags = {"pretrained": weights.source, "pretrained_sha256": weights.sha256}
        if weights.published is not None and spec.context.paper_value(job) is None:
            tags.update(paper_value=f"{weights.published:g}", paper_source=weights.published_source)
    run_metrics = {**metrics, "n_params": n_params, "size_bits": 32 * n_params, "bpw": 32.0,
                   "compression_ratio": 1.0, "time_train_s": t_train}
    return finish(run, result, out, run_metrics, [("train_loss", v, i) for i, v in enumerate(history)], [log_file],
                   tags, examples)


def run_cell(spec: JobSpec, reference: Path, out: Path, log_file: Path | None = None, threads: int = 1,
             show_progress: bool = True, artifact: Path | None = None, prepared: tuple | None = None) -> dict:
    """Compress the reference with the cell's method and budget; pack it to ``artifact`` (default:
    ``model.qbc`` beside ``out``) and evaluate the network rebuilt from that file. ``prepared``:
    the task, builder kwargs, device and tracker of a batch job (:func:`run_cells`), set up once."""
    if prepared is None:
        task, arch_kwargs, device = _setup(spec, threads)
        tracker = experiment_store(spec.context) if distributed.is_main() else None
    else:
        (task, arch_kwargs, device), tracker = prepared
        seed_everything(spec.identity.seed)  # as a fresh job would start: a cell's result is its own
    job = spec.identity
    ref_info = json.loads(Path(reference).read_text())
    method_cls = get_method(job.method)
    if not (distributed.is_main() or method_cls.trains):  # a post-training method runs on rank 0 alone
        return {"status": "ok", "cell_id": job.cell_id, "rank": distributed.rank()}
    artifact = Path(artifact) if artifact else out.parent / "model.qbc"
    made_by = {"reference_sha256": str(ref_info.get("checkpoint_sha256")), "code_sha256": code_sha256(method_cls)}
    if distributed.is_main():  # not Snakemake's output (metrics.json is): a diverged cell has none
        artifact.unlink(missing_ok=True)
    if prepared is not None:  # in a batch job: its cells that finished before are restored, not computed again
        match = {"config_hash": job.digest()[:16], "device": str(device), **made_by}
        restored = _restore(*tracker, spec, match, out, artifact)
        if restored is not None:
            return restored
    run = open_run(spec, {**_tags(spec, device, task), **made_by}, tracker)
    ctx = RunContext(task, job.arch, arch_kwargs, job.seed, device,
                     show_progress=show_progress and distributed.is_main())
    try:
        return _compress_and_evaluate(spec, ctx, run, ref_info, method_cls, out, artifact, log_file)
    except Diverged as e:  # the method's outcome: recorded, and the job goes on
        if distributed.is_main():
            artifact.unlink(missing_ok=True)  # never a file whose network evaluates to NaN
        return {**e.result, "metric": task.metric, "method": job.method, "budget": job.budget}


def _compress_and_evaluate(spec: JobSpec, ctx: RunContext, run: tuple | None, ref_info: dict, method_cls: type,
                           out: Path, artifact: Path, log_file: Path | None) -> dict:
    """The body of :func:`run_cell` inside its run (:func:`~quantbench.jobs.runs.recorded`)."""
    job, task, device = spec.identity, ctx.task, ctx.device
    arch_kwargs = ctx.arch_kwargs
    times = {}
    with recorded(run, log_file, lambda: ctx.step_metrics, outcome=out):
        ckpt = Path(ref_info["checkpoint"])
        if not ckpt.is_file() or file_sha256(ckpt) != ref_info["checkpoint_sha256"]:
            raise ValueError(f"reference checkpoint {ckpt} is missing or does not match the sha256 its reference "
                             f"recorded (damaged or replaced); rebuild it: snakemake --forcerun reference")
        ref = load_checkpoint(ckpt, build_model(job.arch, **arch_kwargs))
        params = make_params(method_cls.Params, job.method_params, f"{job.cell_id}: method_params")
        t0 = time.perf_counter()
        with nullcontext() if method_cls.trains else distributed.alone():
            compressed = method_cls(params).compress(ref.to(device), Budget(job.budget), ctx)
        times["time_compress_s"] = time.perf_counter() - t0
        if not distributed.is_main():
            return {"status": "ok", "cell_id": job.cell_id, "rank": distributed.rank()}
        if not isinstance(compressed, CompressedModel):  # the plugin contract, before anything uses it
            raise ConfigError(f"method {job.method!r} ({method_cls.__module__}.{method_cls.__qualname__}).compress "
                              f"returned {type(compressed).__name__}, expected a CompressedModel (return "
                              f"ctx.assemble(ref, records); docs/adding-a-method.md)")
        compressed.check_finite()  # a method that diverged: caught before anything is packed
        artifact.parent.mkdir(parents=True, exist_ok=True)
        file_bytes = compressed.save(artifact)
        # evaluate what was written, never the method's in-memory model: read back, it must equal what
        # the method produced bit for bit, pay only for levels its codes can use, and be what is evaluated
        t0 = time.perf_counter()
        packed = CompressedModel.load(artifact)
        packed.check_same_as(compressed, source=str(artifact))
        packed.check_code_costs(source=str(artifact))
        weights = packed.state_dict()  # each record dequantized once
        model = packed.to_dense(build_model(packed.arch, **packed.arch_kwargs), weights)
        packed.verify_on_codebook(model, weights)
        metrics, examples = task.evaluate_examples(model.to(device), device=device)
        times["time_eval_s"] = time.perf_counter() - t0
        stats = {**packed.stats(), "file_bytes": float(file_bytes)}
        _check_finite(metrics)
    ref_metric = ref_info["metrics"].get(task.metric, float("nan"))
    result = {"status": "ok", "reason": "", "cell_id": job.cell_id, "metric": task.metric, "metrics": metrics,
              "reference_metrics": ref_info["metrics"], "stats": stats, **times, "budget": job.budget,
              "method": job.method, "artifact_sha256": file_sha256(artifact)}
    run_metrics = {**metrics, **stats, **times, f"reference_{task.metric}": ref_metric}
    return finish(run, result, out, run_metrics, ctx.step_metrics, [artifact, log_file], examples=examples)


def run_cells(specs: list[JobSpec], reference: Path, outs: list[Path], artifacts: list[Path],
              log_files: list[Path | None], threads: int = 1, show_progress: bool = True,
              logged: Callable[[Callable[[], dict], Path | None], dict] | None = None) -> list[dict]:
    """The cells of one batch job (config ``batch``), in order, in this one process: the task,
    device and tracking store are set up once; every cell then runs as :func:`run_cell` (seeded
    afresh, its own run, outputs and log: ``logged(job, log_file)`` runs it with its output going
    there). A failed cell is recorded as such and the next one runs; :class:`JobFailed` at the
    end names the failed cells. A signal ends the job at once (the running cell KILLED)."""
    lengths = {len(specs), len(outs), len(artifacts), len(log_files)}
    if len(lengths) != 1:
        raise ConfigError(f"a batch of {len(specs)} cells needs as many --out, --artifact and --log, got "
                          f"{len(outs)}, {len(artifacts)} and {len(log_files)}")
    first = specs[0]
    for spec in specs[1:]:
        job, one = spec.identity, first.identity
        if (job.kind, job.task, job.arch, job.seed) != ("cell", one.task, one.arch, one.seed) or \
                spec.context != first.context:
            raise ConfigError(f"a batch job runs the cells of one reference: {spec.identity.cell_id} is not of "
                              f"{first.identity.task}/{first.identity.arch}/s{first.identity.seed}")
    if distributed.world_size() > 1 or distributed.launched_by_torchrun():
        raise ConfigError("a batch job runs in one process; a job of several processes runs one cell (batch: cell)")
    prepared = _setup(first, threads), experiment_store(first.context)
    logged = logged or (lambda job, log_file: job())
    results, failed = [], []
    for spec, out, artifact, log_file in zip(specs, outs, artifacts, log_files, strict=True):
        try:
            def cell(spec=spec, out=out, artifact=artifact, log_file=log_file) -> dict:
                return run_cell(spec, reference, Path(out), log_file, threads, show_progress, Path(artifact), prepared)

            results.append(logged(cell, log_file))
        except Exception as e:  # recorded on the cell's run (FAILED) by run_cell; the batch goes on
            print(f"quantbench cell: error: {spec.identity.cell_id}: {e}", file=sys.stderr)
            failed.append(spec.identity.cell_id)
    if failed:
        raise JobFailed(f"{len(failed)} of {len(specs)} cells failed: {', '.join(failed)}")
    return results


def _check_finite(metrics: dict) -> None:
    if not all(math.isfinite(v) for v in metrics.values()):
        raise FloatingPointError(f"non-finite test metrics {metrics}")
