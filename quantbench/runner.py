"""One Snakemake job = one function here: train/load a reference, or run one grid cell.

A cell: load the reference, ``method.compress`` it, pack the result to ``model.qbc``, rebuild a
fresh network **from that file**, check every weight is on its codebook, evaluate it, record
the run in MLflow, and finally write ``metrics.json`` atomically (the Snakemake output; it
appears only when everything before it succeeded).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import traceback
from pathlib import Path

import torch

from models import build_model
from quantbench.data import build_task
from quantbench.format import CompressedModel
from quantbench.method import Budget, RunContext, make_params
from quantbench.registry import get_method
from quantbench.tracking import Tracker, environment_tags, flatten, resolve_tracking_uri
from quantbench.train import (
    TrainSettings,
    content_hash,
    load_checkpoint,
    reference_key,
    save_checkpoint,
    seed_everything,
    train,
)

log = logging.getLogger("quantbench")


def write_json_atomic(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def _setup(spec: dict, threads: int) -> tuple:
    torch.set_num_threads(max(1, threads))
    seed_everything(spec["seed"])
    task = build_task(spec["task"], root=spec["data_root"], download=spec["download"], **spec["task_params"])
    arch_kwargs = {"input_shape": list(task.input_shape), "num_classes": task.num_classes, **spec["arch_params"]}
    return task, arch_kwargs, pick_device(spec["device"])


def _tracker(spec: dict) -> tuple[Tracker, str]:
    results = Path(spec["results_dir"])
    tracker = Tracker(resolve_tracking_uri(spec["tracking_uri"], results))
    return tracker, tracker.ensure_experiment(spec["experiment"], results / "mlartifacts")


def _tags(spec: dict, device: torch.device, cell_id: str, metric: str, status: str, reason: str = "") -> dict:
    tags = {**environment_tags(), "kind": spec["kind"], "cell_id": cell_id, "task": spec["task"], "metric": metric,
            "arch": spec["arch"], "seed": str(spec["seed"]), "device": str(device),
            "config_hash": content_hash(spec)[:16], "status": status}
    if spec["kind"] == "cell":
        tags.update(method=spec["method"], budget=f"{spec['budget']:g}")
    if reason:
        tags["failure_reason"] = reason
    if spec.get("paper") is not None:
        tags.update(paper_value=f"{spec['paper']:g}", paper_source=spec.get("paper_source", ""))
    return tags


def checkpoint_path(spec: dict) -> tuple[Path, str]:
    """Content-addressed location of the reference checkpoint for ``spec``."""
    key = reference_key(spec["task"], spec["task_params"], spec["arch"], spec["arch_params"], spec["seed"],
                        TrainSettings(**spec["train"]))
    digest = content_hash(key)
    return Path(spec["results_dir"]) / "cache" / "references" / f"{digest}.pt", digest


def run_reference(spec: dict, out: Path, log_file: Path | None = None, threads: int = 1,
                  show_progress: bool = True) -> dict:
    """Train the reference (or reuse the cached checkpoint), evaluate, record, write ``out``."""
    task, arch_kwargs, device = _setup(spec, threads)
    model = build_model(spec["arch"], **arch_kwargs)
    ckpt, digest = checkpoint_path(spec)
    cell_id = f"{spec['task']}/{spec['arch']}/reference/s{spec['seed']}"
    status, reason, history = "ok", "", []
    t0 = time.perf_counter()
    if ckpt.is_file():
        log.info("reference %s: cached checkpoint %s", cell_id, ckpt)
        load_checkpoint(ckpt, model)
    else:
        log.info("reference %s: training %s", cell_id, spec["train"])
        try:
            history = train(model, task, TrainSettings(**spec["train"]), spec["seed"], device, show_progress)
            save_checkpoint({k: v.cpu() for k, v in model.state_dict().items()}, ckpt)
        except FloatingPointError as e:
            status, reason = "diverged", str(e)
    t_train = time.perf_counter() - t0
    metrics = task.evaluate(model.to(device), device=device) if status == "ok" else {}
    n_params = sum(p.numel() for p in model.parameters())
    result = {"status": status, "reason": reason, "cell_id": cell_id, "checkpoint": str(ckpt), "hash": digest,
              "cached": not history and status == "ok", "metric": task.metric, "metrics": metrics,
              "n_params": n_params, "size_bits": 32 * n_params, "time_train_s": t_train}
    run_metrics = {**metrics, "n_params": n_params, "size_bits": 32 * n_params, "bpw": 32.0,
                   "compression_ratio": 1.0, "time_train_s": t_train}
    return _finish(spec, result, out, run_metrics, [("train_loss", v, i) for i, v in enumerate(history)],
                   _tags(spec, device, cell_id, task.metric, status, reason), [log_file])


def run_cell(spec: dict, reference: Path, out: Path, log_file: Path | None = None, threads: int = 1,
             show_progress: bool = True) -> dict:
    """Compress the reference with the cell's method and budget; evaluate the packed artifact."""
    task, arch_kwargs, device = _setup(spec, threads)
    cell_id = f"{spec['task']}/{spec['arch']}/{spec['method']}/b{spec['budget']:g}/s{spec['seed']}"
    ref_info = json.loads(Path(reference).read_text())
    tracker, exp_id = _tracker(spec)
    method_cls = get_method(spec["method"])
    ctx = RunContext(task, spec["arch"], arch_kwargs, spec["seed"], device, show_progress=show_progress)
    status, reason, metrics, stats = "ok", "", {}, {}
    artifact = out.parent / "model.qbc"
    times = {}
    try:
        if ref_info["status"] != "ok":
            raise FloatingPointError(f"reference {ref_info['cell_id']} is {ref_info['status']}")
        ref = load_checkpoint(Path(ref_info["checkpoint"]), build_model(spec["arch"], **arch_kwargs))
        params = make_params(method_cls.Params, spec["method_params"], f"method_params.{spec['method']}")
        t0 = time.perf_counter()
        compressed = method_cls(params).compress(ref.to(device), Budget(spec["budget"]), ctx)
        times["time_compress_s"] = time.perf_counter() - t0
        out.parent.mkdir(parents=True, exist_ok=True)
        file_bytes = compressed.save(artifact)
        # evaluate what was written, never the method's in-memory model
        t0 = time.perf_counter()
        packed = CompressedModel.load(artifact)
        model = packed.to_dense(build_model(packed.arch, **packed.arch_kwargs))
        packed.verify_on_codebook(model)
        metrics = task.evaluate(model.to(device), device=device)
        times["time_eval_s"] = time.perf_counter() - t0
        stats = {**packed.stats(), "file_bytes": float(file_bytes)}
        if not all(math.isfinite(v) for v in metrics.values()):
            status, reason = "diverged", f"non-finite test metrics {metrics}"
    except FloatingPointError as e:
        status, reason = "diverged", str(e)
    except Exception as e:
        tracker.record_run(exp_id, cell_id, flatten(spec), {}, ctx.step_metrics,
                           _tags(spec, device, cell_id, task.metric, "failed", f"{type(e).__name__}: {e}"),
                           [log_file] if log_file else [], "FAILED")
        log.error("cell %s failed:\n%s", cell_id, traceback.format_exc())
        raise
    ref_metric = ref_info.get("metrics", {}).get(task.metric, float("nan"))
    result = {"status": status, "reason": reason, "cell_id": cell_id, "metric": task.metric, "metrics": metrics,
              "reference_metrics": ref_info.get("metrics", {}), "stats": stats, **times,
              "budget": spec["budget"], "method": spec["method"]}
    run_metrics = {**metrics, **stats, **times, f"reference_{task.metric}": ref_metric}
    tags = _tags(spec, device, cell_id, task.metric, status, reason)
    return _finish(spec, result, out, run_metrics, ctx.step_metrics, tags, [artifact, log_file], (tracker, exp_id))


def _finish(spec: dict, result: dict, out: Path, metrics: dict, step_metrics: list, tags: dict,
            artifacts: list[Path | None], tracker: tuple[Tracker, str] | None = None) -> dict:
    """Record the run (with ``metrics.json`` among its artifacts), then publish ``out`` atomically."""
    tracker, exp_id = tracker or _tracker(spec)
    pending = out.parent / ".pending" / out.name
    write_json_atomic(result, pending)
    result["run_id"] = tracker.record_run(
        exp_id, result["cell_id"], flatten(spec), metrics, step_metrics, tags,
        [pending] + [a for a in artifacts if a], "FINISHED" if result["status"] == "ok" else "FAILED")
    write_json_atomic(result, out)
    pending.unlink(missing_ok=True)
    return result
