"""Names of a package imported on first use (PEP 562), so that importing a package stays cheap.

``import tripletsk`` and the command line start without loading TensorFlow, h5py or
scikit-learn's heavier modules; a package's ``__init__`` lists its public names and where each
lives, and :func:`lazy_getattr` imports the module when a name is first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def public_names(modules: dict[str, list[str]]) -> dict[str, str]:
    """``{module: [name, ...]}`` -> ``{name: module}``, for :func:`lazy_getattr` and ``__all__``."""
    return {name: module for module, names in modules.items() for name in names}


def lazy_getattr(package: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` that imports ``names[name]`` (a module path) on first use."""

    def __getattr__(name: str) -> object:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
