"""Test-side fault injection for training runs: worker callbacks that raise on purpose.

Installed with ``pipelines.train.driver.train(recipe, callbacks=[FailOnce(...)])``. This
module is not importable on Ray workers (``tests/`` is not a package on their path), so the
tests register it with ``ray.cloudpickle.register_pickle_by_value`` (:func:`picklable`): the
callback class then travels to the workers by value.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.train.callbacks import WorkerCallback

#: created in the run folder by the rank that raises (its presence proves the fault fired)
FAULT_MARKER = "fault_injected"


class InjectedFault(RuntimeError):
    """The failure raised by :class:`FailOnce`."""


def picklable() -> None:
    """Send this module's classes to Ray workers by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass(frozen=True)
class FailOnce(WorkerCallback):
    """Rank ``rank`` raises :class:`InjectedFault` after the first optimizer step of ``epoch``
    (1-based), once per run: the marker file ``<run_dir>/fault_injected`` is created
    exclusively before raising, so a retry of that epoch runs clean.

    After an optimizer step every rank has passed the previous epoch's ``ray.train.report``
    (the step's gradient all-reduce needs them all), so Ray Train holds the previous epoch's
    checkpoint when the fault lands: the retry deterministically resumes from it.
    """

    epoch: int
    rank: int

    def on_step_end(self, epoch: int, step: int, rank: int, run_dir: str) -> None:
        if epoch != self.epoch or rank != self.rank:
            return
        try:
            with open(Path(run_dir) / FAULT_MARKER, "x", encoding="utf-8") as fh:
                fh.write(f"rank {rank} epoch {epoch} step {step}\n")
        except FileExistsError:
            return  # fired already: this is the retry
        raise InjectedFault(f"injected fault: rank {rank}, epoch {epoch}, step {step}")


@dataclass(frozen=True)
class PauseOnce(WorkerCallback):
    """Every rank, at the end of ``epoch`` (after its checkpoint report), creates
    ``<folder>/paused-rank<r>`` exclusively and waits until ``<folder>/release`` exists (at
    most ``timeout_s``, then :class:`InjectedFault`); once per run: a rank whose file exists
    already (the retry) goes on. The run stands still at a known point while the test acts
    on it (e.g. kills a node); the test polls the files, never a sleep."""

    epoch: int
    folder: str
    timeout_s: float = 1800.0  # a bound; the test ends the run long before

    def on_epoch_end(self, epoch: int, rank: int, run_dir: str, metrics: Mapping[str, Any]) -> None:
        if epoch != self.epoch:
            return
        folder = Path(self.folder)
        try:
            with open(folder / f"paused-rank{rank}", "x", encoding="utf-8") as fh:
                fh.write(f"rank {rank} paused after epoch {epoch}\n")
        except FileExistsError:
            return  # paused once already: this is the retry
        deadline = time.monotonic() + self.timeout_s
        while not (folder / "release").exists():
            if time.monotonic() > deadline:
                raise InjectedFault(f"rank {rank}: not released within {self.timeout_s} s")
            time.sleep(0.2)
