"""Wall time per phase of one training step, recorded by the trainer itself (train_grpo.grpo_step).

The trainer logs some phases (generation_seconds) and bench/bench_grpo.py reads them all, so the benchmark times
exactly the code the trainer runs, without wrapping or patching any of its functions.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class PhaseTimer:
    """Accumulates wall time per named phase of the current step; `reset()` starts a new step.

    With `sync=True`, queued GPU work is waited for at each phase boundary, so a phase's time covers its kernels
    (for benchmarks; a trainer leaves it off so the CPU can run ahead of the GPU). A no-op on CPU.
    """

    def __init__(self, sync: bool = False):
        self.sync = sync and torch.cuda.is_available()
        self.seconds: dict[str, float] = {}

    def reset(self) -> None:
        self.seconds = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def _wait(self) -> None:
        if self.sync:
            torch.cuda.synchronize()

    @contextmanager
    def phase(self, name: str):
        self._wait()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._wait()
            self.add(name, time.perf_counter() - start)
