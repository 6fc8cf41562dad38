"""One job at a time, in process: reference cache, cell on the packed artifact, determinism."""

from __future__ import annotations

import json
import math

import pytest

from quantbench.config import load_config
from quantbench.data import build_task
from quantbench.format import CompressedModel
from quantbench.jobs.plan import plan_grid, reference_id
from quantbench.jobs.runner import JobFailed, checkpoint_path, run_cell, run_reference
from quantbench.models import build_model
from quantbench.tracking import Tracker


@pytest.fixture
def jobs(tiny_config, tmp_path):
    cfg = load_config(tiny_config)
    ref_spec = plan_grid(cfg).spec(reference_id("digits", "lenet300", 0))
    ref_out = tmp_path / "ref" / "metrics.json"
    return cfg, ref_spec, ref_out


def test_reference_is_trained_once_then_reused(jobs, tmp_path):
    cfg, spec, out = jobs
    first = run_reference(spec, out, show_progress=False)
    assert first["status"] == "ok" and not first["cached"] and first["metrics"]["accuracy"] > 50
    second = run_reference(spec, tmp_path / "again" / "metrics.json", show_progress=False)
    assert second["cached"] and second["metrics"] == first["metrics"]
    changed = spec.replace(train={**spec.identity.train, "lr": 0.01})
    assert checkpoint_path(changed)[1] != first["hash"]


def test_cell_evaluates_the_packed_artifact_and_is_deterministic(jobs, tmp_path):
    cfg, ref_spec, ref_out = jobs
    run_reference(ref_spec, ref_out, show_progress=False)
    cell = cfg.cells[0]
    results = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt / "metrics.json"
        results.append(run_cell(plan_grid(cfg).spec(cell), ref_out, out, show_progress=False))
        assert json.loads(out.read_text())["metrics"] == results[-1]["metrics"]
    a, b = results
    assert a["metrics"] == b["metrics"] and a["stats"] == b["stats"]
    assert (tmp_path / "a" / "model.qbc").read_bytes() == (tmp_path / "b" / "model.qbc").read_bytes()
    # the reported accuracy and size are those of the file, rebuilt independently here
    packed = CompressedModel.load(tmp_path / "a" / "model.qbc")
    model = packed.to_dense(build_model("lenet300", **packed.arch_kwargs))
    assert build_task("digits").evaluate(model)["accuracy"] == a["metrics"]["accuracy"]
    assert a["stats"]["bpw"] == pytest.approx(2 + 3 * 64 / (64 * 300 + 300 * 100 + 100 * 10))
    assert a["stats"]["file_bytes"] == (tmp_path / "a" / "model.qbc").stat().st_size
    runs = Tracker(cfg.tracking_uri()).runs("tiny")
    cells = runs[runs["tags.kind"] == "cell"]
    assert len(cells) == 2 and set(cells["tags.cell_id"]) == {cell.id}
    assert set(cells["params.method"]) == {"rtn"}
    # the identity is the params and the hash (both runs the same); where things live is only tagged
    assert set(cells["tags.config_hash"]) == {plan_grid(cfg).identity(cell).digest()[:16]}
    assert "params.results_dir" not in cells and cells["tags.results_dir"].iloc[0] == cfg["results_dir"]
    assert (cells["tags.method_package"].iloc[0], cells["tags.method_module"].iloc[0]) == ("quantbench",
                                                                                          "quantbench.methods.rtn.RTN")
    assert (cells["metrics.accuracy"] == a["metrics"]["accuracy"]).all()


def test_diverged_reference_fails_its_job_and_records_why(jobs, tmp_path):
    cfg, ref_spec, ref_out = jobs
    spec = ref_spec.replace(train={**ref_spec.identity.train, "lr": 1e6, "momentum": 0.99})
    with pytest.raises(JobFailed, match="digits/lenet300/reference/s0 diverged: training loss is"):
        run_reference(spec, ref_out, show_progress=False)
    assert not ref_out.exists() and not checkpoint_path(spec)[0].exists()
    runs = Tracker(cfg.tracking_uri()).runs("tiny")
    assert list(runs["status"]) == ["FAILED"] and list(runs["tags.status"]) == ["diverged"]
    assert "loss is" in runs["tags.failure_reason"].iloc[0]


@pytest.mark.parametrize("settings, factors", [
    # cosine to 0 over the epochs: ½(1 + cos(π t/T))
    ({"epochs": 4}, [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]),
    # step: × gamma at each milestone
    ({"epochs": 5, "lr_schedule": "step", "milestones": [2, 4], "gamma": 0.1}, [1.0, 1.0, 0.1, 0.1, 0.01]),
    ({"epochs": 3, "lr_schedule": "constant"}, [1.0, 1.0, 1.0]),
    # linear warm-up (e + 1)/(w + 1), then the schedule over the epochs left
    ({"epochs": 4, "warmup_epochs": 2, "lr_schedule": "cosine"}, [1 / 3, 2 / 3, 1.0, 0.5]),
])
def test_the_reference_schedules_set_the_learning_rate_of_each_epoch(settings, factors):
    import torch

    from quantbench.training.loop import TrainSettings, make_schedule

    s = TrainSettings(lr=0.2, **settings)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=s.lr)
    schedule, seen = make_schedule(opt, s), []
    for _ in range(s.epochs):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert seen == pytest.approx([0.2 * f for f in factors], rel=1e-12)
