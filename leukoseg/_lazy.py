"""Public names served from submodules imported on first use, so that importing a package stays cheap."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, submodule_of: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose public names live in its submodules.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    submodule_of : mapping of str to str
        Public name -> submodule (relative, without the dot) that defines it.

    Examples
    --------
    In a package's ``__init__.py``::

        __getattr__, __dir__ = lazy_exports(__name__, {"CellFeatures": "extract"})
    """

    def __getattr__(name: str) -> object:
        if name in submodule_of:
            return getattr(importlib.import_module(f".{submodule_of[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(submodule_of))

    return __getattr__, __dir__
