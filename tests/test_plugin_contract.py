"""The plugin contract, checked where a plugin is loaded and where its result is used
(docs/adding-a-method.md): each mistake is one line naming the plugin and what was expected, and a
broken plugin does not hide the others (tests/fixtures/bad_plugins)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantbench.config import load_config
from quantbench.errors import ConfigError
from quantbench.jobs.plan import plan_grid, reference_id
from quantbench.jobs.runner import run_cell, run_reference

BAD_PLUGINS = Path(__file__).resolve().parent / "fixtures" / "bad_plugins"


@pytest.fixture
def bad_plugins(monkeypatch) -> Path:
    from quantbench.registry import METHODS

    monkeypatch.syspath_prepend(str(BAD_PLUGINS))
    monkeypatch.setattr(METHODS, "_entry_points", None)
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))  # what they register leaves with the test
    monkeypatch.setenv("PYTHONPATH", ":".join(filter(None, [str(BAD_PLUGINS), os.environ.get("PYTHONPATH")])))
    return BAD_PLUGINS


@pytest.mark.parametrize("name, expected", [
    ("not_a_class", "quantbench_bad_plugins.not_a_method is not a Method subclass (expected a class deriving "
                    "from quantbench.method.Method"),
    ("params_not_dataclass", "quantbench_bad_plugins.ParamsNotDataclass.Params is not a dataclass (its fields "
                             "are the config keys method_params.params_not_dataclass.<field>"),
    ("does_not_import", "cannot be loaded: ModuleNotFoundError: No module named 'quantbench_bad_plugins_missing'"),
])
def test_a_plugin_that_breaks_the_contract_is_refused_naming_it(bad_plugins, name, expected):
    from quantbench.methods import get_method

    with pytest.raises(ConfigError) as refused:
        get_method(name)
    message = str(refused.value)
    assert f"method plugin {name!r} (entry point" in message and "of quantbench-bad-plugins" in message
    assert expected in message and "\n" not in message


def test_a_broken_plugin_does_not_hide_the_other_methods(bad_plugins):
    proc = subprocess.run([sys.executable, "-m", "quantbench.cli", "methods"], capture_output=True, text=True,
                          timeout=300)
    listed = {line.split()[0] for line in proc.stdout.splitlines()}
    assert {"rtn", "gpfq", "lc_adaptive", "returns_none", "returns_state_dict"} <= listed
    errors = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(errors) == 3 and "Traceback" not in proc.stderr
    for name in ("not_a_class", "params_not_dataclass", "does_not_import"):
        assert sum(line.startswith(f"quantbench methods: error: method plugin {name!r}") for line in errors) == 1


@pytest.mark.parametrize("name, returned", [("returns_none", "NoneType"), ("returns_state_dict", "OrderedDict")])
def test_a_compress_that_returns_no_compressed_model_fails_naming_the_contract(bad_plugins, tiny_config, tmp_path,
                                                                             name, returned):
    cfg = load_config({**tiny_config, "methods": [name], "budgets": [2], "reference": {"epochs": 1}})
    plan = plan_grid(cfg)
    ref_out = tmp_path / "ref" / "metrics.json"
    run_reference(plan.spec(reference_id("digits", "lenet300", 0)), ref_out, show_progress=False)
    with pytest.raises(ConfigError) as refused:
        run_cell(plan.spec(cfg.cells[0]), ref_out, tmp_path / "cell" / "metrics.json", show_progress=False)
    assert str(refused.value) == (
        f"method {name!r} (quantbench_bad_plugins.{'ReturnsNone' if name == 'returns_none' else 'ReturnsStateDict'})"
        f".compress returned {returned}, expected a CompressedModel (return ctx.assemble(ref, records); "
        f"docs/adding-a-method.md)")
