"""The method registry: decorator registration plus entry points ``quantbench.methods``."""

from __future__ import annotations

from importlib.metadata import entry_points

from quantbench.method import ConfigError, Method

ENTRY_POINT_GROUP = "quantbench.methods"
_METHODS: dict[str, type[Method]] = {}
_loaded = False


def register_method(name: str):
    """Class decorator: ``@register_method("rtn")`` makes the method available to configs."""

    def wrap(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method({name!r}) must decorate a Method subclass")
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice ({_METHODS[name].__module__}, {cls.__module__})")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import methods  # noqa: F401  (its modules register the built-in methods)

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _METHODS:
            continue  # a plugin module may register itself by decorator on import as well
        cls = ep.load()
        if ep.name not in _METHODS:
            register_method(ep.name)(cls)


def available_methods() -> list[str]:
    _load()
    return sorted(_METHODS)


def get_method(name: str) -> type[Method]:
    """The class of a method, or of a variant label ``<method>@<variant>`` (config ``variants``)."""
    _load()
    base = name.partition("@")[0]
    if base not in _METHODS:
        raise ConfigError(f"unknown method {base!r}; available: {sorted(_METHODS)}")
    return _METHODS[base]
