"""Reading a grid: its YAML file, ``--config`` overrides typed as YAML would type them, and the JSON
schema (``workflows/schemas/config.schema.yaml``) that validates it and fills in its defaults.

Every error names the key path (``config.recipes.digits.lenet300.lr``) and what is allowed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path

import jsonschema
import yaml

from quantbench.errors import ConfigError

SCHEMA = "schemas/config.schema.yaml"  # package data of quantbench.workflows (the layout's workflows/)


def _with_defaults(validator_cls):
    """A validator class that fills in ``default`` values while it validates."""
    validate_properties = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


def _path(error: jsonschema.ValidationError) -> str:
    out = "config"
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _explain(error: jsonschema.ValidationError) -> str:
    where = _path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return f"{where}: unknown key(s) {extra}; allowed keys: {allowed}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not allowed; allowed values: {error.validator_value}"
    return f"{where}: {error.message}"


def load_schema() -> dict:
    from importlib.resources import files

    return yaml.safe_load(files("quantbench.workflows").joinpath(SCHEMA).read_text())


def validated(source: str | Path | dict) -> dict:
    """``source`` (a YAML path or a dict, not changed) checked against the schema, defaults filled in;
    a ConfigError listing every violation otherwise."""
    raw = copy.deepcopy(source) if isinstance(source, dict) else read_yaml(source)
    validator = _with_defaults(jsonschema.Draft7Validator)(load_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    explained = [_explain(e) for e in errors] + [f"{where}: .nan is not a number" for where in _nans(raw, "config")]
    if explained:
        raise ConfigError("invalid config:\n  " + "\n  ".join(explained))
    return raw


def _nans(value, where: str) -> list[str]:
    """The key paths of every NaN in ``value`` (YAML's ``.nan`` passes a schema's minimum: NaN < 0 is false)."""
    if isinstance(value, float) and math.isnan(value):
        return [where]
    if isinstance(value, Mapping):
        return [w for k, v in value.items() for w in _nans(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [w for i, v in enumerate(value) for w in _nans(v, f"{where}[{i}]")]
    return []


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def task_archs(raw: dict, task: str) -> list[str]:
    """The archs ``task`` runs: ``archs`` itself, or ``archs[task]`` when it is a mapping."""
    return raw["archs"][task] if isinstance(raw["archs"], dict) else raw["archs"]


def typed_overrides(overrides: Mapping) -> dict:
    """``snakemake --config`` values as the YAML file would have them.

    Snakemake reads ``key=value`` with YAML's BaseLoader below the top level, so ``budgets=[1,2]``,
    ``download=true`` and ``method_params={rtn: {per_channel: true}}`` arrive with strings for
    numbers and booleans. Each string leaf that reads as a boolean, null, integer or float becomes
    one; every other string stays a string (``archs=[lenet300]``).
    """
    def typed(value):
        if isinstance(value, Mapping):
            return {k: typed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [typed(v) for v in value]
        if not isinstance(value, str):
            return value
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        if value in ("null", "~"):
            return None
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        return value

    return typed(dict(overrides))


def merged_config(base: Mapping, overrides: Mapping) -> dict:
    """``base`` with ``overrides`` on top, mappings merged key by key, anything else replaced (as
    Snakemake merges ``--config`` into a config file)."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
