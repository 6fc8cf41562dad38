"""The calibration axis (config ``calibration``): planned as variants of the methods that calibrate,
refused where a task cannot give the sample, shown in the tables and plotted against its size."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers.records import Record, correctness

from quantbench.config import load_config
from quantbench.errors import ConfigError
from quantbench.jobs.plan import plan_grid
from quantbench.methods import available_methods, get_method
from quantbench.report.plots import calibration_rows
from quantbench.report.summary import summarize

GRID = {"name": "cal", "tasks": ["digits"], "archs": ["lenet300"], "methods": ["rtn", "msq", "gpfq", "gptq"],
        "budgets": [2], "seeds": [0, 1], "calibration": {"samples": [32, 128]}}


def test_methods_that_calibrate_run_once_per_size_and_the_others_once():
    cfg = load_config(GRID)
    labels = sorted({c.method for c in cfg.cells})
    assert labels == ["gpfq@n128", "gpfq@n32", "gptq@n128", "gptq@n32", "msq", "rtn"]
    for label in ("gpfq@n32", "gptq@n128"):
        params = plan_grid(cfg).identity(next(c for c in cfg.cells if c.method == label)).method_params
        assert params["calib_samples"] == int(label.rpartition("@n")[2])
    # every method with a calibration sample declares it, and only those
    for name in available_methods():
        fields = {f.name for f in dataclasses.fields(get_method(name).Params)}
        assert get_method(name).calibrated == ("calib_samples" in fields and name != "msq"), name
    without = load_config({**GRID, "calibration": {}})
    assert sorted({c.method for c in without.cells}) == ["gpfq", "gptq", "msq", "rtn"]


@pytest.mark.parametrize("axis, message", [
    ({"samples": [32, 5000]}, r"config.calibration.samples\[1\]: 5000 is more than the 1797 training examples "
                              r"task digits has"),
    ({"samples": [0]}, r"config.calibration.samples\[0\]: 0 is less than the minimum of 1"),
    ({"samples": [32], "source": "heldout"}, r"config.calibration.source: 'heldout' is not allowed; allowed "
                                             r"values: \['train'\]"),
    ({"samples": [32], "source": "test"}, r"config.calibration.source: 'test' is not allowed"),
    ({"samples": []}, r"config.calibration.samples: \[\] should be non-empty"),
])
def test_a_calibration_the_task_cannot_give_is_refused_naming_the_key(axis, message):
    with pytest.raises(ConfigError, match=message):
        load_config({**GRID, "calibration": axis})


def test_a_variant_named_like_a_calibration_size_is_refused():
    with pytest.raises(ConfigError, match=r"config.variants.gpfq.n32: that name is config.calibration's variant"):
        load_config({**GRID, "variants": {"gpfq": {"n32": {"scale_factor": 2.0}}}})


def test_the_tables_order_sizes_by_value_and_the_plot_reads_them(tmp_path):
    rec = Record(tmp_path, name="cal")
    rec.run(None, None, 0, correctness(0.97, 0))
    for i, label in enumerate(["gpfq@n1024", "gpfq@n32", "gpfq@n128", "rtn"]):
        rec.run(label, 2, 0, correctness(0.80 + 0.03 * i, i + 1))
    csv, _ = rec.tables()
    assert list(csv["method"][csv["method"].str.startswith("gpfq")]) == ["gpfq@n32", "gpfq@n128", "gpfq@n1024"]
    long = summarize(rec.tracker.runs("cal"))
    rows = calibration_rows(long[long["task"] == "digits"])
    assert sorted(rows["samples"]) == [32, 128, 1024] and set(rows["base"]) == {"gpfq"}
    means = dict(zip(rows["samples"], rows["mean"], strict=True))
    assert np.isclose(means[32], 100 * correctness(0.83, 2).mean())
    out = tmp_path / "tables"
    assert (out / "digits_calibration.png").is_file() and (out / "digits_calibration.pdf").is_file()


def test_a_record_without_a_calibration_axis_has_no_calibration_plot(tmp_path):
    rec = Record(tmp_path, name="plain")
    rec.run(None, None, 0, correctness(0.97, 0))
    rec.run("gpfq", 2, 0, correctness(0.9, 1))
    rec.tables()
    assert (tmp_path / "tables" / "digits_size.png").is_file()
    assert not (tmp_path / "tables" / "digits_calibration.png").exists()
