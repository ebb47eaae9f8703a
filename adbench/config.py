"""Method configs: dataclass defaults (= ``paper`` profile), named profiles, user overrides.

Resolution order, later wins: dataclass defaults -> ``PROFILES[profile]`` -> YAML file
(``--config``) -> ``--set key=value``. Values from the command line arrive as strings and are
converted to the field's declared type; an unknown key or a value of the wrong type is a
``ConfigError`` naming the key, which the CLI turns into one line and exit code 2.

The resolved config is what the record stores and what the config hash is computed from, so
two runs with the same effective settings share results whatever way they were spelled.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from adbench.errors import ConfigError


@dataclass
class MethodConfig:
    """Base of every method config. Geometry fields are shared by convention.

    image_size: square resize applied to image and mask (aspect not kept).
    crop_size:  optional centre crop after the resize (None = no crop).
    batch_size: training batch size (the method may use another for inference).
    """

    image_size: int = 256
    crop_size: typing.Optional[int] = None
    batch_size: int = 32

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """Short stable hash of the resolved values (part of the job key)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def parse_set_options(items: typing.Iterable[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; a malformed item is a ConfigError."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item!r}: empty key")
        out[key] = value.strip()
    return out


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a ``--config`` YAML file: a flat mapping of field -> value.

    A file may also hold a ``methods:`` mapping of method name -> mapping, for grids of
    several methods; ``overrides_for`` picks the right part.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise ConfigError(f"--config {path}: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of key: value")
    return data


def overrides_for(method: str, yaml_data: Mapping[str, Any]) -> dict[str, Any]:
    """Flat keys apply to every method; ``methods: {name: {...}}`` to one method only."""
    flat = {k: v for k, v in yaml_data.items() if k != "methods"}
    per_method = (yaml_data.get("methods") or {}).get(method) or {}
    return {**flat, **per_method}


def resolve_config(
    config_cls: type[MethodConfig],
    profiles: Mapping[str, Mapping[str, Any]],
    profile: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    method: str = "",
    strict: bool = True,
) -> MethodConfig:
    """Build the config for ``profile`` with ``overrides`` applied and type-checked.

    ``strict=False`` ignores override keys the config does not have (used for YAML keys shared
    by a grid of methods); command-line ``--set`` keys are always strict.
    """
    if profile not in profiles and profile != "paper":
        known = ", ".join(sorted(set(profiles) | {"paper"}))
        raise ConfigError(f"--profile {profile!r} is not defined for {method or 'this method'} (known: {known})")
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(config_cls)
    for source, mapping in (("profile " + profile, profiles.get(profile, {})), ("override", overrides or {})):
        for key, raw in mapping.items():
            if key not in fields:
                if not strict and source == "override":
                    continue
                close = _close_matches(key, fields)
                hint = f" (did you mean {close}?)" if close else ""
                raise ConfigError(f"--set {key}: unknown key for {method or config_cls.__name__}{hint}")
            values[key] = coerce_value(key, raw, hints[key], method=method)
    return config_cls(**values)


def _close_matches(key: str, names: typing.Iterable[str]) -> str:
    import difflib

    found = difflib.get_close_matches(key, list(names), n=2)
    return " or ".join(found)


def coerce_value(key: str, raw: Any, annotation: Any, *, method: str = "") -> Any:
    """Convert ``raw`` (a CLI string or a YAML value) to the field's annotated type."""
    where = f"--set {key}={raw!r}"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    # Optional[X] / X | None
    if origin in (typing.Union, types.UnionType):
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in {"none", "null", ""}):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce_value(key, raw, arg, method=method)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: expected {_type_name(annotation)}")
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == str(raw):
                return choice
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, args))}")
    if origin in (tuple, list):
        items = raw
        if isinstance(raw, str):
            items = [s for s in raw.replace("+", ",").split(",") if s.strip() != ""]
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where}: expected a comma-separated list")
        inner = args[0] if args else str
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            inner = args[0]
        elif origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values")
            return tuple(coerce_value(key, v, a, method=method) for v, a in zip(items, args))
        converted = [coerce_value(key, v, inner, method=method) for v in items]
        return tuple(converted) if origin is tuple else converted
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: expected true or false")
    if annotation is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: expected an integer")
        try:
            value = float(raw) if isinstance(raw, str) and any(c in raw for c in ".eE") else raw
            as_int = int(value)
            if isinstance(value, float) and value != as_int:
                raise ValueError
            return as_int
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer") from None
    if annotation is float:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number") from None
    if annotation is str:
        if isinstance(raw, (dict, list)):
            raise ConfigError(f"{where}: expected a string")
        return str(raw)
    if annotation is typing.Any:
        return raw
    raise ConfigError(f"{where}: unsupported field type {_type_name(annotation)}")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
