"""Timing of TRL/transformers baselines, shared by the benches (imported as a sibling: benches run as scripts)."""

from __future__ import annotations

import time


def step_timer():
    """A ``TrainerCallback`` whose ``total`` sums optimizer-step wall time (like the platform's step_time_s),
    excluding trainer start-up."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.total, self.t0 = 0.0, None

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.total += time.perf_counter() - self.t0

    return StepTimer()
