"""Prometheus metrics of training workers (infra/README.md "Metrics contract"), via ``ray.util.metrics`` so
Ray's metrics exporter serves them (``ray_`` prefix stripped by monitoring/prometheus.yml)."""

from __future__ import annotations


class TrainMetrics:
    """Best effort: outside a Ray worker (or if Ray metrics are unavailable) every call is a no-op."""

    def __init__(self, run: str, rank: int):
        self.run, self.rank = run, rank
        self._ok = False
        try:
            from ray.util.metrics import Gauge, Histogram

            self.tokens = Gauge("lexforge_train_tokens_per_second", description="tokens/s processed by one worker",
                                tag_keys=("run", "rank"))
            buckets = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
            self.step = Histogram("lexforge_train_step_seconds", description="wall time of one optimizer step",
                                  boundaries=buckets, tag_keys=("run",))
            self.stall = Histogram("lexforge_checkpoint_stall_seconds",
                                   description="time the training loop was blocked by one checkpoint save",
                                   boundaries=buckets, tag_keys=("run",))
            self._ok = True
        except Exception:  # noqa: BLE001 - metrics must never break training
            pass

    def record(self, tokens_per_s: float, step_s: float, stall_s: float | None) -> None:
        if not self._ok:
            return
        try:
            self.tokens.set(tokens_per_s, tags={"run": self.run, "rank": str(self.rank)})
            if self.rank == 0:
                self.step.observe(step_s, tags={"run": self.run})
                if stall_s:
                    self.stall.observe(stall_s, tags={"run": self.run})
        except Exception:  # noqa: BLE001
            self._ok = False
