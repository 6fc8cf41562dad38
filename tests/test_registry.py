"""Method registry: decorator registration and entry points from other installed packages."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

import quantbench.registry as registry
from quantbench.method import ConfigError, Method


def test_builtin_methods_are_registered():
    assert "rtn" in registry.available_methods()
    assert registry.get_method("rtn").name == "rtn"
    with pytest.raises(ConfigError, match="unknown method 'nope'; available: .*rtn"):
        registry.get_method("nope")


def test_decorator_refuses_non_methods_and_double_registration():
    with pytest.raises(TypeError):
        registry.register_method("bad")(object)

    class A(Method):
        pass

    class B(Method):
        pass

    registry.register_method("_test_a")(A)
    try:
        with pytest.raises(ValueError, match="registered twice"):
            registry.register_method("_test_a")(B)
    finally:
        registry._METHODS.pop("_test_a")


def test_entry_point_plugin_is_discovered(tmp_path, monkeypatch):
    """A separately installed distribution declaring ``quantbench.methods`` entry points."""
    (tmp_path / "qb_plugin_demo.py").write_text(textwrap.dedent("""
        from quantbench.method import Method

        class Halve(Method):
            def compress(self, ref, budget, ctx):
                raise NotImplementedError
    """))
    dist = tmp_path / "qb_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: qb-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[quantbench.methods]\nhalve = qb_plugin_demo:Halve\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    assert "halve" in registry.available_methods()
    cls = registry.get_method("halve")
    assert cls.__module__ == "qb_plugin_demo" and cls.name == "halve"
    sys.modules.pop("qb_plugin_demo", None)
