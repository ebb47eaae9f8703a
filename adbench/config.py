"""Method configs: dataclass defaults (= ``paper`` profile), named profiles, user overrides.

Resolution order, later wins: dataclass defaults -> ``PROFILES[profile]`` -> YAML file
(``--config``) -> ``--set key=value``. Values from the command line arrive as strings and are
converted to the field's declared type; an unknown key, a value of the wrong type or out of
range (``MethodConfig.validate``: shared rules for sizes, batch sizes, epochs, learning rates,
plus each method's own) is a ``ConfigError`` naming the key and where its value came from
(``--set k=v``, ``--config FILE: key k=v``, ``profile P: key k=v``), which the CLI turns into
one line and exit code 2 before any job starts.

The resolved config is what the record stores and what the config hash is computed from, so
two runs with the same effective settings share results whatever way they were spelled.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
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

    def validate(self) -> None:
        """Range checks, run by ``resolve_config`` on every resolved config (before any job).

        The base class checks the fields shared by convention (``shared_field_problems``:
        sizes, batch sizes, epochs, learning rates...), so every method and plugin gets them.
        A method adds its own rules by overriding this and calling ``super().validate()``;
        raise ``ConfigError("--set key=value: why")``: ``resolve_config`` replaces ``--set``
        by where the value really came from (``--config FILE: key ...``, ``profile X: key ...``).
        """
        problems = shared_field_problems({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if problems:
            raise ConfigError(problems[0], problems=problems)

    def inert_options(self) -> dict[str, str]:
        """Options this configuration does not read, each with the reason (``reject_inert``):
        ``resolve_config`` turns one the user set into a ConfigError. Methods override it."""
        return {}


#: smallest allowed value of fields shared by convention, by name or name suffix
_POSITIVE_INTS = ("image_size", "crop_size", "max_steps", "steps_per_epoch", "num_threads")
_POSITIVE_INT_SUFFIXES = ("batch_size",)
_NON_NEGATIVE = ("epochs", "weight_decay")
_NON_NEGATIVE_SUFFIXES = ("_epochs", "_weight_decay")
_POSITIVE_FLOATS = ("lr",)
_POSITIVE_FLOAT_SUFFIXES = ("_lr",)


def shared_field_problems(values: Mapping[str, Any], *, user_set: typing.Container[str] = ()) -> list[str]:
    """Problems of the fields every method names the same way, as ``--set key=value: why`` lines.

    Rules apply by field name, so a plugin's config that has ``epochs`` or ``lr`` gets them
    too: sizes, batch sizes, step caps and thread counts are >= 1; ``epochs`` / ``*_epochs``
    and weight decays >= 0 (0 epochs is a real setting: CutPaste on ImageNet features); learning
    rates > 0 and finite; no float is NaN; ``crop_size`` <= ``image_size``. ``None`` (an
    Optional field left unset) is always fine. ``user_set``: the fields the user gave; when one
    of ``crop_size`` / ``image_size`` was given and the other not, the conflict is reported
    against the one given.
    """
    problems: list[str] = []

    def bad(name: str, why: str) -> None:
        problems.append(f"--set {name}={_spell(values[name])}: {why}")

    for name, value in values.items():
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and math.isnan(value):
            bad(name, "not a number")
        elif name in _POSITIVE_INTS or name.endswith(_POSITIVE_INT_SUFFIXES):
            if value < 1:
                bad(name, "must be a positive integer")
        elif name in _NON_NEGATIVE or name.endswith(_NON_NEGATIVE_SUFFIXES):
            if value < 0:
                bad(name, "must be >= 0")
        elif name in _POSITIVE_FLOATS or name.endswith(_POSITIVE_FLOAT_SUFFIXES):
            if not (0 < value < math.inf):
                bad(name, "must be a positive number")
    image, crop = values.get("image_size"), values.get("crop_size")
    if (isinstance(image, int) and isinstance(crop, int) and not isinstance(crop, bool)
            and 1 <= image < crop):
        if "image_size" in user_set and "crop_size" not in user_set:
            bad("image_size", f"smaller than crop_size={crop} (the centre crop is taken from the "
                              f"resized image; set crop_size too, or crop_size=none)")
        else:
            bad("crop_size", f"larger than image_size={image} (the centre crop is taken from the "
                             f"resized image)")
    return problems


def _spell(value: Any) -> str:
    """A value as it would be written after ``--set key=``."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


# --------------------------------------------------------------------------------------------
# Where a value came from: the start of its error line
# --------------------------------------------------------------------------------------------
#: ``--set key=value``; ``resolve_config``'s default for every override
SET_SOURCE = "--set "


def yaml_source(path: str | Path, method: str | None = None) -> str:
    """``--config FILE: key k`` (flat keys) or ``--config FILE: key methods.M.k`` (per method)."""
    return f"--config {path}: key " + (f"methods.{method}." if method else "")


def profile_source(profile: str) -> str:
    return f"profile {profile}: key "


def merge_overrides(layers: typing.Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[dict[str, Any], dict[str, str]]:
    """``[(source, mapping), ...]``, later wins -> ``(overrides, sources)`` for ``resolve_config``.

    ``source`` is ``SET_SOURCE``, ``yaml_source(path)`` or ``yaml_source(path, method)``.
    """
    overrides: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, mapping in layers:
        for key, value in (mapping or {}).items():
            overrides[key] = value
            sources[key] = source
    return overrides, sources


_SET_LINE = re.compile(r"--set (?P<key>[A-Za-z_]\w*)(?=[=: ]|$)")


def relabel(problem: str, sources: Mapping[str, str]) -> str:
    """``--set key...`` -> ``<source of key>key...`` (other lines unchanged)."""
    m = _SET_LINE.match(problem)
    if m is None:
        return problem
    source = sources.get(m.group("key"))
    if not source or source == SET_SOURCE:
        return problem
    return source + problem[len("--set "):]


def reject_inert(config: MethodConfig, inert: Mapping[str, str],
                 user_set: typing.Optional[typing.Container[str]] = None) -> None:
    """No silent options: an option set by the user where it has no effect is an error.

    ``inert`` (``config.inert_options()``) maps each option the configuration does not read to
    why (``{"reweight_b": "reweight is off"}``). A user who sets an option expects it to change
    the run; ignoring it would record a config that does not describe what ran. Only options in
    ``user_set`` (the keys given with ``--set`` or ``--config``) whose value differs from the
    dataclass default are errors: a value equal to the default changes nothing either way, and
    an option a *profile* set that the user's other settings made inert (``--profile quick
    --set stages=ncl`` leaves quick's discriminator width unused) is the profile's, not the
    user's. ``user_set=None`` checks every field (the test that no profile sets an option it
    cannot use). One ConfigError, one line per option: ``--set NAME=VALUE has no effect: WHY``.
    """
    problems = []
    for name, why in inert.items():
        if user_set is not None and name not in user_set:
            continue
        value, default = getattr(config, name), _default(_field(config, name))
        if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
            same = list(value) == list(default)
        else:
            same = value == default
        if not same:
            problems.append(f"--set {name}={_spell(value)} has no effect: {why}")
    if problems:
        raise ConfigError(problems[0], problems=problems)


def _field(config: MethodConfig, name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(config)}[name]


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


def load_yaml_config(path: str | Path, *, known_methods: typing.Iterable[str] | None = None) -> dict[str, Any]:
    """Read a ``--config`` YAML file: a flat mapping of field -> value.

    A file may also hold a ``methods:`` mapping of method name -> mapping, for grids of
    several methods; ``overrides_for`` picks the right part. Every problem is one ConfigError
    line naming the file: unreadable or non-UTF-8 bytes (line and column of the first bad
    byte), YAML syntax (line and column), a key given twice, a top level that is not a
    mapping, and a name under ``methods:`` that is not a registered method (``known_methods``,
    default: the method registry, plugins included; a registered method that the run does not
    select is fine: one file can serve several grids).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"--config {path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}, "
                          f"column {column}); save the file as UTF-8") from None
    data = _parse_yaml(path, text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of key: value")
    _check_methods_section(path, data, known_methods)
    return data


def _parse_yaml(path: Path, text: str) -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(loader, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: let PyYAML report it
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first at line {first.line + 1})", key_node.start_mark)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: {_yaml_problem(exc)}") from None


def _yaml_problem(exc: Exception) -> str:
    """``line L, column C: problem (context at line L2, column C2)`` from a PyYAML error."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["invalid YAML"])[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None and (mark is None or context_mark.line != mark.line
                                                 or context_mark.column != mark.column):
        problem += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    elif context:
        problem += f" ({context})"
    return f"invalid YAML at {where}{problem}" if where else f"invalid YAML: {problem}"


def _check_methods_section(path: Path, data: Mapping[str, Any], known_methods) -> None:
    if "methods" not in data or data["methods"] is None:
        return
    section = data["methods"]
    if not isinstance(section, dict):
        raise ConfigError(f"--config {path}: 'methods' must map method names to settings")
    if known_methods is None:
        from adbench.registry import METHODS

        known = set(METHODS.names())
        broken = {m.rsplit(".", 1)[-1]: f"{m} failed to import: {e}" for m, e in METHODS.import_errors.items()}
    else:
        known, broken = set(known_methods), {}
    problems = []
    for name, settings in section.items():
        if name not in known:
            close = _close_matches(str(name), sorted(known))
            hint = f" (did you mean {close}?)" if close else f" (known: {', '.join(sorted(known))})"
            if name in broken:
                hint = f" (module {broken[name]})"
            problems.append(f"--config {path}: methods.{name}: unknown method{hint}")
        elif settings is not None and not isinstance(settings, dict):
            problems.append(f"--config {path}: methods.{name} must be a mapping of key: value")
    if problems:
        raise ConfigError(problems[0], problems=problems)


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
    sources: Mapping[str, str] | None = None,
) -> MethodConfig:
    """Build the config for ``profile`` with ``overrides`` applied, type- and range-checked.

    ``strict=False`` ignores override keys the config does not have (used for YAML keys shared
    by a grid of methods); command-line ``--set`` keys are always strict.

    ``sources`` maps an override key to where it came from (``SET_SOURCE``, ``yaml_source(...)``;
    see ``merge_overrides``); keys it does not name are taken as ``--set``. Error lines start
    with the real source: ``--set image_size=0: ...``, ``--config a.yaml: key image_size=0:
    ...``, ``profile quick: key ...``. After the dataclass is built (its ``__post_init__`` may
    raise ConfigErrors of its own, relabelled the same way), ``config.validate()`` runs the
    range checks (``MethodConfig.validate``: the shared fields; methods may add more).
    """
    if profile not in profiles and profile != "paper":
        known = ", ".join(sorted(set(profiles) | {"paper"}))
        raise ConfigError(f"--profile {profile!r} is not defined for {method or 'this method'} (known: {known})")
    where: dict[str, str] = {key: profile_source(profile) for key in profiles.get(profile, {})}
    for key in overrides or {}:
        where[key] = (sources or {}).get(key, SET_SOURCE)
    try:
        return _resolve(config_cls, profiles, profile, overrides, method=method, strict=strict,
                        user_set=set(overrides or {}))
    except ConfigError as exc:
        problems = [relabel(p, where) for p in exc.problems]
        if problems == exc.problems:
            raise
        raise ConfigError(problems[0], problems=problems) from exc


def _resolve(config_cls, profiles, profile, overrides, *, method, strict, user_set) -> MethodConfig:
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
    # the shared rules first, on the values as given: a method's __post_init__ may compute with
    # them (a batch size of 0 must be this line, not a ZeroDivisionError)
    effective = {name: values.get(name, _default(f)) for name, f in fields.items()}
    problems = shared_field_problems(effective, user_set=user_set)
    if problems:
        raise ConfigError(problems[0], problems=problems)
    try:
        config = config_cls(**values)
    except (TypeError, ValueError, ArithmeticError) as exc:
        who = method or config_cls.__name__
        raise ConfigError(f"{who}: invalid configuration ({type(exc).__name__}: {exc})") from exc
    config.validate()
    reject_inert(config, config.inert_options(), user_set)
    return config


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def _close_matches(key: str, names: typing.Iterable[str]) -> str:
    import difflib

    found = difflib.get_close_matches(key, list(names), n=2)
    return " or ".join(found)


def coerce_value(key: str, raw: Any, annotation: Any, *, method: str = "") -> Any:
    """Convert ``raw`` (a CLI string or a YAML value) to the field's annotated type."""
    where = f"--set {key}={raw!r}"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):  # Optional[X] / X | None
        return _coerce_union(key, raw, annotation, args, method)
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == str(raw):
                return choice
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, args))}")
    if origin in (tuple, list):
        return _coerce_sequence(key, raw, origin, args, method)
    if annotation is bool:
        return _coerce_bool(where, raw)
    if annotation is int:
        return _coerce_int(where, raw)
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


def _coerce_union(key: str, raw: Any, annotation: Any, args: tuple, method: str) -> Any:
    """None for ``none``/``null``/'' when the union allows it, else the first member type that
    takes the value."""
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in {"none", "null", ""}):
        if type(None) in args:
            return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce_value(key, raw, arg, method=method)
        except ConfigError:
            pass
    raise ConfigError(f"--set {key}={raw!r}: expected {_type_name(annotation)}")


def _coerce_sequence(key: str, raw: Any, origin: Any, args: tuple, method: str) -> Any:
    """A list or tuple from a comma (or ``+``) separated string or a YAML list, each item
    coerced; a fixed-length tuple needs exactly its number of values."""
    where = f"--set {key}={raw!r}"
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


def _coerce_bool(where: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{where}: expected true or false")


def _coerce_int(where: str, raw: Any) -> int:
    """An integer, also from ``1e3`` or ``2.0``; never from a bool or a fraction."""
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


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
