"""Preemption awareness: turn SIGTERM (or a stop request in the store) into "save at the next step boundary
and exit cleanly".

Sources of a stop request, checked at every step boundary:

* SIGTERM delivered to a training worker (k8s pod eviction, spot reclaim). Ray runs the train function in a
  thread, so the handler is installed in the worker actor's main thread through the actor's ``execute``.
* the run's stop request in the store (:meth:`lexforge.storage.records.RunRecords.request_stop`), written by
  the driver when *it* receives SIGTERM (``lexforge train`` / the Ray job entrypoint), checked by rank 0 every
  few seconds.
* ``LEXFORGE_PREEMPT_AT_STEP=N`` (preemption drill for tests/benchmarks: behaves exactly like a SIGTERM
  arriving during step N).

The per-rank flags are combined with an all-reduce (MAX) by the checkpoint manager, so all ranks agree.
"""

from __future__ import annotations

import os
import signal
import threading
import time

_SIGTERM = threading.Event()


def _on_sigterm(signum, frame) -> None:  # runs in the main thread of the process
    _SIGTERM.set()


def _install_sigterm_handler() -> bool:
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def install_worker_sigterm_handler() -> str:
    """Install the SIGTERM handler in this process's main thread; returns how it was installed."""
    if _install_sigterm_handler():
        return "main-thread"
    try:
        import ray

        actor = ray.get_runtime_context().current_actor
        ok = ray.get(actor.execute.remote(_install_sigterm_handler), timeout=30)
        return "ray-actor-main-thread" if ok else "unavailable"
    except Exception as e:  # noqa: BLE001 - preemption still works through the store flag
        return f"unavailable ({type(e).__name__})"


class PreemptionWatcher:
    def __init__(self, records, rank: int, check_every_s: float = 2.0):
        self.records, self.rank = records, rank
        self.check_every_s = check_every_s
        self._last_check = 0.0
        self._store_flag = False
        drill = os.environ.get("LEXFORGE_PREEMPT_AT_STEP")
        self.drill_step = int(drill) if drill else None
        self.reason: str | None = None
        self.handler = install_worker_sigterm_handler()

    def local_flag(self, step: int) -> bool:
        if _SIGTERM.is_set():
            self.reason = "SIGTERM"
            return True
        if self.drill_step is not None and step >= self.drill_step:
            self.reason = f"drill at step {self.drill_step}"
            return True
        if self.rank == 0 and not self._store_flag and time.monotonic() - self._last_check >= self.check_every_s:
            self._last_check = time.monotonic()
            try:
                self._store_flag = self.records.stop_requested()
            except Exception:  # noqa: BLE001 - a flaky store read must not kill training
                self._store_flag = False
            if self._store_flag:
                self.reason = "stop requested by driver"
        return self._store_flag
