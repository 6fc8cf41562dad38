"""Config validation: defaults, the grid, and errors that name the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantbench.config import load_config
from quantbench.jobs.plan import plan_grid
from quantbench.method import ConfigError
from quantbench.report.stats import MARGINS


def test_defaults_are_filled_and_grid_expanded():
    cfg = load_config({"name": "x", "seeds": [0, 1]})
    assert cfg["tasks"] == ["digits"] and cfg["archs"] == ["lenet300"] and cfg["budgets"] == [2, 4, 8]
    assert cfg["results_dir"] == "results" and cfg["tracking_uri"] is None
    assert len(cfg.cells) == 1 * 1 * 1 * 3 * 2
    assert {c.id for c in cfg.cells} >= {"digits/lenet300/rtn/b2/s0", "digits/lenet300/rtn/b8/s1"}
    assert cfg.train_settings().epochs == 30


def test_default_config_file_is_valid():
    cfg = load_config("workflows/config/default.yaml")
    ids = {c.id for c in cfg.cells}
    archs = ["lenet300", "lenet5", "resnet20", "vgg16", "vit"]
    for method, budgets in {"rtn": [1, 1.58, 2], "lc_adaptive": [1, 2], "dc": [1, 2], "idc": [1, 2],
                            "lc_binary": [1], "lc_scaled_binary": [1], "lc_ternary": [1.58], "lc_pow2": [1.58],
                            "gpfq": [1, 1.58, 2], "msq": [1, 1.58, 2], "qat": [1, 2], "lsq": [2],
                            "diffq": [1.58, 2], "diffq_fixed": [2], "opq": [1, 1.58, 2],
                            "opq_oneshot": [1, 1.58, 2], "prune_quant_uniform": [1, 1.58, 2]}.items():
        for arch in archs:  # every method on every architecture family
            assert {f"digits/{arch}/{method}/b{b}/s0" for b in budgets} <= ids
    assert "digits/lenet300/lc_ternary/b2/s0" not in ids


def test_the_tables_size_tolerance_defaults_to_one_percent_and_takes_its_range():
    defaults = {"size_tolerance": 0.01, "alpha": 0.05, "margins": MARGINS}
    assert load_config({"name": "x"})["tables"] == defaults == load_config({"name": "x", "tables": {}})["tables"]
    for tolerance in (1e-9, 0.05, 0.5):  # (0, 0.5]: the upper end is allowed
        cfg = load_config({"name": "x", "tables": {"size_tolerance": tolerance}})
        assert cfg["tables"]["size_tolerance"] == tolerance


def test_cells_a_method_cannot_serve_are_skipped_with_a_reason():
    # the symmetric grid holds 0, so an odd number of levels: 3 at 1.58 bits, none at 1 or 4 bits
    cfg = load_config({"name": "x", "budgets": [1, 1.58, 4], "method_params": {"rtn": {"scheme": "symmetric"}}})
    assert [c.budget for c in cfg.cells] == ["1.58"]
    assert [c.budget for c, _ in cfg.skipped] == ["1", "4"]
    assert "rtn does not serve a 4-bit budget" in cfg.skipped[1][1]
    assert cfg.skipped_summary() == ["rtn: 2 cell(s), does not serve 1-bit, 4-bit"]


def test_the_skipped_cells_of_the_default_grid_read_one_line_per_method():
    cfg = load_config(str(Path(__file__).parent.parent / "workflows/config/default.yaml"))
    lines = cfg.skipped_summary()
    methods = [line.split(":")[0] for line in lines]
    assert len(methods) == len(set(methods)) == len({c.method for c, _ in cfg.skipped})
    assert sum(int(line.split(": ")[1].split(" ")[0]) for line in lines) == len(cfg.skipped)
    seeds = len(cfg["seeds"])
    assert f"lc_ternary: {10 * seeds} cell(s), does not serve 1-bit, 2-bit" in lines  # 5 archs × 2 budgets × seeds


def test_method_params_reach_the_cell_spec():
    cfg = load_config({"name": "x", "method_params": {"rtn": {"per_channel": True}}})
    job = plan_grid(cfg).identity(cfg.cells[0])
    assert job.method_params == {"scheme": "minmax", "per_channel": True, "float_dtype": "float32"}
    assert job.budget == 2.0 and job.kind == "cell"


@pytest.mark.parametrize("config, message", [
    ({"name": "x", "methods": ["rnt"]}, r"config.methods\[0\]: unknown method 'rnt'; allowed values: \[.*'rtn'"),
    ({"name": "x", "budgets": [4, -2]}, r"config.budgets\[1\]: -2 is less than or equal to the minimum of 0"),
    ({"name": "x", "budgets": [40]}, r"config.budgets\[0\]: 40 is greater than the maximum of 32"),
    ({"name": "x", "budgts": [4]}, r"config: unknown key\(s\) \['budgts'\]; allowed keys: \[.*'budgets'"),
    ({"name": "x", "seeds": ["a"]}, r"config.seeds\[0\]: 'a' is not of type 'integer'"),
    ({"name": "x", "device": "tpu"}, r"config.device: 'tpu' is not allowed; allowed values: \['auto', 'cpu', 'cuda'\]"),
    ({"budgets": [4]}, r"config: 'name' is a required property"),
    ({"name": "x", "archs": ["resnet9000"]}, r"config.archs\[0\]: unknown arch 'resnet9000'"),
    ({"name": "x", "tasks": ["imagenet21k"]}, r"config.tasks\[0\]: unknown task 'imagenet21k'"),
    ({"name": "x", "method_params": {"rtn": {"scheme": "log"}}},
     r"config.method_params.rtn.scheme: 'log' is not allowed; allowed: \['minmax', 'symmetric'\]"),
    ({"name": "x", "method_params": {"rtn": {"perchannel": True}}},
     r"config.method_params.rtn.perchannel: unknown parameter; allowed: \['float_dtype', 'per_channel', 'scheme'\]"),
    ({"name": "x", "method_params": {"rtn": {"per_channel": "yes"}}},
     r"config.method_params.rtn.per_channel: expected bool, got str 'yes'"),
    ({"name": "x", "method_params": {"rtm": {}}}, r"config.method_params.rtm: unknown method"),
    ({"name": "x", "reference": {"epochs": 2.5}}, r"config.reference.epochs: expected int, got float 2.5"),
    ({"name": "x", "arch_params": {"lenet300": {"depth": 3}}},
     r"config.arch_params.lenet300.depth: unknown parameter; allowed: \['hidden', 'width'\]"),
    ({"name": "x", "tables": {"size_tolerance": 0}},
     r"config.tables.size_tolerance: 0 is less than or equal to the minimum of 0"),
    ({"name": "x", "tables": {"size_tolerance": -0.01}},
     r"config.tables.size_tolerance: -0.01 is less than or equal to the minimum of 0"),
    ({"name": "x", "tables": {"size_tolerance": 0.6}},
     r"config.tables.size_tolerance: 0.6 is greater than the maximum of 0.5"),
    ({"name": "x", "tables": {"size_tolerance": "1%"}}, r"config.tables.size_tolerance: '1%' is not of type 'number'"),
    ({"name": "x", "tables": {"tolerance": 0.1}},
     r"config.tables: unknown key\(s\) \['tolerance'\]; allowed keys: \['alpha', 'margins', 'size_tolerance'\]"),
    ({"name": "x", "tables": {"margins": {"accuracy": -0.5}}},
     r"config.tables.margins.accuracy: -0.5 is less than the minimum of 0"),
    ({"name": "x", "tables": {"margins": {"accuracy": float("nan")}}}, r"config.tables.margins.accuracy: .nan is not"),
    ({"name": "x", "tables": {"margins": {"top1": 0.5}}}, r"config.tables.margins: unknown key\(s\) \['top1'\]"),
    ({"name": "x", "tables": {"alpha": 0}}, r"config.tables.alpha: 0 is less than or equal to the minimum of 0"),
    ({"name": "x", "tables": {"alpha": 0.9}}, r"config.tables.alpha: 0.9 is greater than the maximum of 0.5"),
])
def test_invalid_configs_name_the_key_and_the_allowed_values(config, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
