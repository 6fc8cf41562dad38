"""The registries: one rule for duplicates, entry points loaded only when named, broken plugins
reported by package and entry point, builders' own bugs kept apart from config mistakes."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from quantbench.data import build_task
from quantbench.method import ConfigError, Method
from quantbench.methods import available_methods, get_method
from quantbench.models import build_model
from quantbench.registry import METHODS, MODELS, TASKS, Registry, register_method

REPO = Path(__file__).resolve().parent.parent


def test_builtin_methods_are_registered():
    assert "rtn" in available_methods()
    assert get_method("rtn").name == "rtn" and get_method("lc_adaptive@lloyd") is get_method("lc_adaptive")
    with pytest.raises(ConfigError, match="unknown method 'nope'; available: .*rtn"):
        get_method("nope")


def test_the_registry_imports_no_plugin():
    """Importing quantbench.registry alone registers nothing: the packages register on import."""
    code = ("import sys, quantbench.registry as r; print(len(r.METHODS._items), len(r.MODELS._items), "
            "'quantbench.methods' in sys.modules, 'quantbench.models' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.stdout.split() == ["0", "0", "False", "False"], out.stderr


@pytest.mark.parametrize("registry", [METHODS, MODELS, TASKS], ids=lambda r: r.kind)
def test_one_rule_for_duplicates_naming_both_places(registry):
    taken = registry.names()[0]
    other = type("Impostor", (Method,), {}) if registry is METHODS else (lambda **kw: None)
    with pytest.raises(ValueError, match=rf"{registry.kind} '{taken}' is registered twice: .* and .*"):
        registry.register(other, taken)
    assert registry.get(taken) is not other


def test_the_decorator_refuses_non_methods():
    with pytest.raises(TypeError, match="is not a Method subclass"):
        register_method("bad")(object)


def _plugin(tmp_path: Path, monkeypatch, module: str, body: str, entry: str) -> Registry:
    """A separately installed distribution with a ``quantbench.methods`` entry point; returns a
    fresh method registry that sees it (the built-ins copied in)."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(body))
    dist = tmp_path / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[quantbench.methods]\n{entry}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    fresh = Registry("method", group="quantbench.methods")
    fresh._items = dict(METHODS._items)
    return fresh


def test_an_entry_point_is_loaded_only_when_named(tmp_path, monkeypatch):
    registry = _plugin(tmp_path, monkeypatch, "qb_plugin_demo", """
        from quantbench.method import Method

        class Halve(Method):
            def compress(self, ref, budget, ctx):
                raise NotImplementedError
    """, "halve = qb_plugin_demo:Halve")
    assert "halve" in registry.names() and "qb_plugin_demo" not in sys.modules  # listed, not imported
    cls = registry.get("halve")
    assert cls.__module__ == "qb_plugin_demo" and registry.get("halve") is cls
    sys.modules.pop("qb_plugin_demo", None)


def test_a_broken_plugin_names_its_package_and_breaks_only_the_grids_that_use_it(tmp_path, monkeypatch):
    registry = _plugin(tmp_path, monkeypatch, "qb_broken_demo", "x = 1\n", "typo = qb_broken_demo:Missing")
    assert registry.get("rtn") is get_method("rtn")  # other methods are unaffected
    with pytest.raises(ConfigError, match=r"method plugin 'typo' \(entry point 'qb_broken_demo:Missing' of "
                                          r"qb-broken-demo, group quantbench.methods\) cannot be loaded: "
                                          r"AttributeError"):
        registry.get("typo")


def test_a_plugin_may_not_take_a_built_in_name(tmp_path, monkeypatch):
    registry = _plugin(tmp_path, monkeypatch, "qb_clash_demo", """
        from quantbench.method import Method

        class RTN(Method):
            pass
    """, "rtn = qb_clash_demo:RTN")
    with pytest.raises(ConfigError, match=r"method plugin 'rtn' .* of qb-clash-demo.* takes the name of "
                                          r"quantbench.methods.rtn.RTN"):
        registry.get("rtn")
    sys.modules.pop("qb_clash_demo", None)


def test_a_builder_s_own_type_error_is_its_traceback_not_a_config_error(monkeypatch):
    def broken(input_shape, num_classes, width: float = 1.0):
        return len(width)  # a bug: TypeError inside the builder

    monkeypatch.setitem(MODELS._items, "_broken", broken)
    with pytest.raises(TypeError, match="has no len"):
        build_model("_broken", (1, 8, 8), 10, width=2.0)
    with pytest.raises(ConfigError, match=r"arch_params._broken.depth: unknown parameter; allowed: \['width'\]"):
        build_model("_broken", (1, 8, 8), 10, depth=2)
    with pytest.raises(ConfigError, match=r"task_params.digits.size: unknown parameter"):
        build_task("digits", size=3)


def test_a_plugin_installed_after_the_entry_points_were_read_is_found(tmp_path, monkeypatch):
    """A long-lived process (a test session, a notebook) that listed the methods before a plugin
    was installed still finds it by name."""
    early = Registry("method", group="quantbench.methods")
    early._items = dict(METHODS._items)
    assert "late" not in early.names()  # the entry points are read (and cached) here
    _plugin(tmp_path, monkeypatch, "qb_late_demo", """
        from quantbench.method import Method

        class Late(Method):
            pass
    """, "late = qb_late_demo:Late")
    assert early.get("late").__name__ == "Late"
    sys.modules.pop("qb_late_demo", None)
