"""Running a method or a job the way the harness does."""

from __future__ import annotations

import re
from pathlib import Path

from quantbench.format import CompressedModel
from quantbench.method import Budget, RunContext, make_params
from quantbench.methods import get_method
from quantbench.models import build_model


def compress_digits(name: str, bits: float, digits_reference, **params):
    """Run method ``name`` on the digits reference; returns the model unpacked from its packed
    bytes, the test metrics of the network rebuilt from it, and the run context."""
    task, kwargs, ref = digits_reference
    cls = get_method(name)
    ctx = RunContext(task, "lenet300", kwargs, seed=0, show_progress=False)
    packed = cls(make_params(cls.Params, params, name)).compress(ref, Budget(bits), ctx).pack()
    cm = CompressedModel.unpack(packed)
    return cm, task.evaluate(cm.to_dense(build_model("lenet300", **kwargs))), ctx


def job_args(cfg, job: str, where: Path) -> list[str]:
    """A job's command-line options as Snakemake gives them: the grid's plan written to
    ``where/plan.json``, the job's id and its digest."""
    from quantbench.jobs.plan import plan_grid

    plan = plan_grid(cfg)
    path = plan.write(where / "plan.json")
    job_id = job if isinstance(job, str) else job.id
    return ["--plan", str(path), "--job", job_id, "--digest", plan.digests[job_id][:16]]


def dry_run_jobs(output: str) -> list[dict]:
    """The jobs a ``snakemake -n -p`` printed: each one's ``rule``, declared ``output`` and ``log`` files
    (lists), ``wildcards`` (a dict) and ``shell`` command."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule )", output):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if rule is None:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, flags=re.M))
        shell = re.search(r"^Shell command: (.*)$", block, flags=re.M)
        jobs.append({"rule": rule.group(1), "output": fields.get("output", "").split(", "),
                     "log": fields["log"].split(", ") if "log" in fields else [],
                     "wildcards": dict(p.split("=", 1) for p in fields["wildcards"].split(", "))
                     if "wildcards" in fields else {},
                     "shell": shell.group(1) if shell else None})
    return jobs
