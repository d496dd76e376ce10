"""Reader base class and the registry of benchmark readers.

A reader is a class registered under a dataset name with :func:`register_reader`; the prep
job looks it up with :func:`data_prep.readers.get_reader` (no ``if dataset == ...`` chains
anywhere). This module never imports the concrete readers: the package does.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from data_prep.samples import DatasetRootError, Reject, Sample

Record = Sample | Reject


@dataclass(frozen=True)
class IndexUnit:
    """An independent piece of a benchmark's index (e.g. one video), read inside a prep task.

    ``weight`` estimates the clips it yields (shards are planned from it); ``payload`` is
    JSON-able and, with ``key``, all :meth:`Reader.unit_records` needs.
    """

    key: str
    split: str
    weight: int
    payload: Any

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "split": self.split,
            "weight": self.weight,
            "payload": self.payload,
        }


_R = TypeVar("_R", bound=type["Reader"])

#: dataset name -> reader class, filled by @register_reader (see data_prep.readers)
REGISTRY: dict[str, type[Reader]] = {}


def register_reader(name: str) -> Callable[[_R], _R]:
    """Class decorator: make a reader available as ``--dataset <name>``."""

    def deco(cls: _R) -> _R:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"reader {name!r} registered twice")
        REGISTRY[name] = cls
        return cls

    return deco


class Reader(ABC):
    """Reads one benchmark from its native layout into :class:`Sample` / :class:`Reject` records.

    Subclasses declare ``expected`` (paths relative to the root that must exist, with a short
    description) and implement :meth:`records`.
    """

    title: ClassVar[str] = "dataset"
    expected: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, root: str | os.PathLike[str], dataset: str) -> None:
        self.root = Path(root).resolve()
        self.dataset = dataset
        self.check_root()

    def check_root(self) -> None:
        """Raise one :class:`DatasetRootError` listing everything missing under the root."""
        if not self.root.is_dir():
            raise DatasetRootError(
                f"{self.title} root {self.root} is not a directory; expected it to contain: "
                + "; ".join(f"{p} ({d})" for p, d in self.expected)
            )
        missing = [(p, d) for p, d in self.expected if not (self.root / p).exists()]
        if missing:
            raise DatasetRootError(
                f"{self.title} root {self.root} does not look like {self.title}: missing "
                + "; ".join(f"{p} ({d})" for p, d in missing)
                + ". Point --root at the folder that holds "
                + ", ".join(p for p, _ in self.expected)
                + "."
            )

    @abstractmethod
    def records(self) -> Iterator[Record]:
        """Yield samples and rejects in a deterministic order."""

    def units(self) -> tuple[list[Reject], list[IndexUnit]] | None:
        """Optional split of the index for distributed reading.

        Returns the rejects found by a cheap driver-side pass and independent units whose
        expensive part (:meth:`unit_records`, e.g. opening mask files) runs inside the prep
        tasks, fused with decoding. ``None`` (default): the whole index is read in the driver.
        ``records()`` must equal the head rejects followed by every unit's records.
        """
        return None

    def unit_records(self, unit: IndexUnit) -> Iterator[Record]:
        raise NotImplementedError(f"{type(self).__name__} does not split its index")

    def reject(self, item: str | os.PathLike[str], reason: str) -> Reject:
        return Reject(source=self.dataset, item=str(item), reason=reason)

    def read(self) -> tuple[list[Sample], list[Reject]]:
        """All samples and rejects (samples are small records; no pixels are read)."""
        return split_records(self.records())


def split_records(records: Iterable[Record]) -> tuple[list[Sample], list[Reject]]:
    samples: list[Sample] = []
    rejects: list[Reject] = []
    for r in records:
        (samples if isinstance(r, Sample) else rejects).append(r)
    return samples, rejects


def decode_text_lines(
    path: Path, encoding: str = "utf-8"
) -> Iterator[tuple[int, str | None, bytes]]:
    """Yield ``(line_number, text or None if undecodable, raw bytes)`` for each non-blank line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError:
                text = None
            yield n, text, raw


def clean_expression(text: str | None) -> str | None:
    """The cleaned expression, or None if unusable (the caller writes the reject)."""
    if text is None:
        return None
    text = " ".join(text.strip().strip('"').split())
    return text or None


def expression_problem(text: str | None, path: Path, line: int) -> str:
    if text is None:
        return (
            f"line {line} of {path} is not valid UTF-8; re-save the file as UTF-8 "
            f"(or fix the bytes of that line)"
        )
    return f"line {line} of {path} has an empty expression; write the sentence or delete the row"
