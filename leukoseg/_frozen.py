"""Read-only views for the fields of frozen result dataclasses (private).

``@dataclass(frozen=True)`` stops a field from being rebound, not an array or a dict it holds from being
changed in place; the results' ``__post_init__`` pass their array and mapping fields through these.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["freeze_fields", "read_only", "read_only_mapping"]


def read_only(array: Any) -> np.ndarray:
    """A read-only view of `array` (the array itself, which the caller may still own, stays writable)."""
    view = np.asarray(array).view()
    view.flags.writeable = False
    return view


def read_only_mapping(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy of `mapping`: its arrays as read-only views, its mappings read-only in turn."""
    return types.MappingProxyType({
        key: read_only(value) if isinstance(value, np.ndarray)
        else read_only_mapping(value) if isinstance(value, Mapping) else value
        for key, value in mapping.items()
    })  # fmt: skip


def freeze_fields(result: Any, *names: str) -> None:
    """Make the named fields of a frozen dataclass read-only, in its ``__post_init__``: a mapping as
    :func:`read_only_mapping`, anything else as an array, :func:`read_only` (views, so that the caller's own
    arrays stay writable)."""
    for name in names:
        value = getattr(result, name)
        frozen = read_only_mapping(value) if isinstance(value, Mapping) else read_only(value)
        object.__setattr__(result, name, frozen)  # the dataclass is frozen: set through object
