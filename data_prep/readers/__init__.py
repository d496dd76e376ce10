"""Benchmark readers, one module per benchmark, registered by dataset name.

Importing this package imports every built-in reader module, whose ``@register_reader``
decorators fill :data:`data_prep.readers.base.REGISTRY`; a plug-in reader registers itself the
same way once its module is imported.
"""

from __future__ import annotations

import os

from data_prep.readers import a2d, custom, davis, jhmdb, ytvos  # noqa: F401 - registration
from data_prep.readers.base import REGISTRY, Reader, register_reader


def available_readers() -> list[str]:
    return sorted(REGISTRY)


def get_reader(name: str, root: str | os.PathLike[str]) -> Reader:
    """An instance of the reader registered as ``name``, checked against ``root``."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; known: {', '.join(sorted(REGISTRY))}"
        ) from None
    return cls(root, dataset=name)


__all__ = ["Reader", "available_readers", "get_reader", "register_reader"]
