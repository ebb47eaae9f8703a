#!/usr/bin/env python
"""``python cli.py ...`` from a checkout is the same CLI as the installed ``adbench ...``.

Installed (``pip install -e .``), this just calls ``adbench.cli:main``. From a bare checkout it
first puts the repository on ``sys.path`` and maps ``methods/`` and ``datasets/`` to
``adbench.methods`` / ``adbench.datasets``, as pyproject's ``package-dir`` does. This runs at
import time, so job processes started with multiprocessing's *spawn* (which re-import the main
module) see the same mapping.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent


def _map_checkout() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import adbench  # noqa: F401  (from the checkout if not installed)

    for sub in ("methods", "datasets"):
        name = f"adbench.{sub}"
        if name in sys.modules:
            continue
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is not None:
            continue
        init = REPO / sub / "__init__.py"
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(REPO / sub)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        setattr(sys.modules["adbench"], sub, module)


_map_checkout()

if __name__ == "__main__":
    from adbench.cli import main

    main()
