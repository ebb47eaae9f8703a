"""Method and dataset registries.

Three ways in, one table out (``adbench list methods|datasets`` shows where each came from):

* built-ins: every module of ``adbench.methods`` / ``adbench.datasets`` is imported on first
  use and registers itself with ``@register_method`` / ``@register_dataset``; adding a file
  is enough, there is no central list to edit;
* entry points: third-party packages declare ``[project.entry-points."adbench.methods"]``
  (or ``adbench.datasets``) ``name = "pkg.module:Class"`` or ``"pkg.module"``;
* ``--plugin some.module``: imports a module that registers more with the decorators.

A module that fails to import does not take the others down: its error is kept and shown by
``adbench list`` and when the user asks for a name it would have provided.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, TypeVar

from adbench.errors import RegistryError

T = TypeVar("T")


@dataclass
class Entry:
    name: str
    obj: type
    origin: str  # "builtin", "entry point (dist x.y)", "plugin module.name"


class Registry:
    def __init__(self, kind: str, package: str, group: str):
        self.kind = kind  # "method" or "dataset"
        self.package = package
        self.group = group
        self.entries: dict[str, Entry] = {}
        self.import_errors: dict[str, str] = {}
        self._loaded = False
        self._current_origin = "builtin"

    # --- registration --------------------------------------------------------------------
    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            existing = self.entries.get(name)
            if existing is not None and existing.obj is not cls:
                same = f"{existing.obj.__module__}.{existing.obj.__qualname__}" == f"{cls.__module__}.{cls.__qualname__}"
                if not same:
                    raise RegistryError(
                        f"{self.kind} name {name!r} registered twice: by {existing.origin} "
                        f"({existing.obj.__module__}) and by {cls.__module__}"
                    )
            cls.name = name  # type: ignore[attr-defined]
            self.entries[name] = Entry(name, cls, self._origin_for(cls))
            return cls

        return decorator

    def _origin_for(self, cls: type) -> str:
        if self._current_origin != "builtin":
            return self._current_origin
        if cls.__module__.startswith(self.package + "."):
            return "builtin"
        return f"module {cls.__module__}"

    # --- discovery -----------------------------------------------------------------------
    def load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            if info.name.startswith("_"):
                continue
            self._import(f"{self.package}.{info.name}", "builtin")
        for ep in _entry_points(self.group):
            dist = getattr(ep, "dist", None)
            origin = f"entry point {ep.name} ({dist.name} {dist.version})" if dist else f"entry point {ep.name}"
            self._current_origin = origin
            try:
                obj = ep.load()
                if isinstance(obj, type) and ep.name not in self.entries:
                    self.register(ep.name)(obj)
            except Exception as exc:  # a broken third-party package must not break adbench
                self.import_errors[ep.value] = f"{type(exc).__name__}: {exc}"
            finally:
                self._current_origin = "builtin"

    def load_plugin(self, module: str) -> None:
        """``--plugin some.module``: import it; its decorators register what it provides.

        A plugin module may register methods and datasets alike, so both registries label
        what it adds as coming from the plugin.
        """
        registries = (METHODS, DATASETS)
        for registry in registries:
            registry.load()
            registry._current_origin = f"plugin {module}"
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise RegistryError(f"--plugin {module}: cannot import ({_one_line(exc)})") from None
        except RegistryError as exc:  # e.g. a name it registers is taken
            raise RegistryError(f"--plugin {module}: {_one_line(exc)}") from None
        except (Exception, SystemExit) as exc:  # any failure at import is the plugin's, not ours
            raise RegistryError(
                f"--plugin {module}: failed while importing ({type(exc).__name__}: {_one_line(exc)})"
            ) from exc
        finally:
            for registry in registries:
                registry._current_origin = "builtin"

    def _import(self, module: str, origin: str) -> None:
        try:
            importlib.import_module(module)
        except Exception as exc:
            self.import_errors[module] = f"{type(exc).__name__}: {exc}"

    # --- lookup ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        self.load()
        return sorted(self.entries)

    def get(self, name: str) -> type:
        self.load()
        if name in self.entries:
            return self.entries[name].obj
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        broken = [m for m in self.import_errors if m.rsplit(".", 1)[-1] == name]
        if broken:
            hint += f"; module {broken[0]} failed to import: {self.import_errors[broken[0]]}"
        option = "--method" if self.kind == "method" else "--dataset"
        raise RegistryError(
            f"{option} {name!r}: unknown {self.kind}{hint}. Known: {', '.join(self.names())}"
        )

    def resolve_list(self, spec: str) -> list[str]:
        """``all`` | ``a`` | ``a,b``: validated names, in the given order.

        An empty spec (``--method ""``, ``--method " , "``) is an error, not "all": a script
        whose variable came out empty must not silently run every method.
        """
        option = "--method" if self.kind == "method" else "--dataset"
        names = [s.strip() for s in str(spec).split(",") if s.strip()]
        if not names:
            raise RegistryError(f"{option} {spec!r}: no {self.kind} name given "
                                f"(give a name, a comma list, or 'all')")
        if names == ["all"]:
            return self.names()
        if "all" in names:
            raise RegistryError(f"{option} {spec!r}: 'all' cannot be combined with other names")
        for name in names:
            self.get(name)
        return names


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _entry_points(group: str):
    try:
        return list(metadata.entry_points(group=group))
    except TypeError:  # Python < 3.10 API
        return list(metadata.entry_points().get(group, []))


METHODS = Registry("method", "adbench.methods", "adbench.methods")
DATASETS = Registry("dataset", "adbench.datasets", "adbench.datasets")


def register_method(name: str):
    """Class decorator: ``@register_method("patchcore") class PatchCore(Detector): ...``"""
    return METHODS.register(name)


def register_dataset(name: str):
    """Class decorator: ``@register_dataset("mvtec") class MVTec(DatasetAdapter): ...``"""
    return DATASETS.register(name)


def load_plugins(modules: list[str]) -> None:
    for module in modules:
        METHODS.load_plugin(module)
