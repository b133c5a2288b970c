"""Stopping a run without losing it: Ctrl-C / SIGTERM and timed checkpoints within an epoch.

While the epochs run, the first SIGINT or SIGTERM asks the loop to save its exact position
(mid-epoch included) to last.pt and return; `cifar100 train --resume RUN` then continues as
if nothing happened. A second signal stops at once, as usual, and so does the first one
during data loading or feature extraction, which resume from their caches.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

import torch

from cifar100.engine import distributed
from cifar100.engine.distributed import DistInfo


class SignalStop:
    """A context in which SIGINT and SIGTERM set `received` instead of stopping the process."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, quiet: bool = False) -> None:
        self.received: str | None = None
        self.quiet = quiet
        self.unit = "step"  # what finishes before the stop: "head epoch" in features mode
        self._previous: dict[int, object] = {}

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():  # signals go to it alone
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. SIGINT in a background job
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:  # asked twice: stop now
            self.__exit__()
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        if not self.quiet:
            print(
                f"\n{self.received}: finishing this {self.unit}, saving, then stopping "
                "(send it again to stop at once)",
                file=sys.stderr,
                flush=True,
            )


class StepWatch:
    """After each step: save the position now? stop now? Every rank gets the same answer.

    One process decides every step (no device sync). Under DDP the ranks agree at logging
    steps only, with one tiny all-reduce, so a signal that reaches the ranks at different
    steps still stops them all at the same one.
    """

    def __init__(
        self,
        signals: SignalStop,
        every_minutes: float,
        dist: DistInfo,
        device: torch.device,
        max_steps: int | None = None,
    ) -> None:
        self.signals, self.dist, self.device = signals, dist, device
        self.every_s = every_minutes * 60
        self.max_steps = max_steps  # stop after this many steps of this session (tests, demos)
        self.steps = 0
        self.last_save = time.monotonic()
        self.limit_hit = False
        self.elsewhere = False  # another rank asked to stop

    @property
    def reason(self) -> str | None:
        if self.signals.received:
            return self.signals.received
        if self.limit_hit:
            return "max_steps"
        return "a signal to another rank" if self.elsewhere else None

    def after_step(self, logging_step: bool) -> tuple[bool, bool]:
        """(save, stop) after one more optimizer step."""
        self.steps += 1
        if self.max_steps is not None and self.steps >= self.max_steps:
            self.limit_hit = True
        if self.dist.enabled and not logging_step:
            return False, False
        stop = self.reason is not None
        save = self.every_s > 0 and time.monotonic() - self.last_save >= self.every_s
        if self.dist.enabled:
            flags = torch.tensor([float(stop), float(save)], device=self.device)
            stop, save = (bool(v > 0) for v in distributed.all_reduce_sum(flags, self.dist))
            self.elsewhere = stop and self.reason is None
        if save or stop:
            self.last_save = time.monotonic()
        return save or stop, stop

    def after_epoch(self) -> bool:
        """Stop now that the epoch's checkpoint is written?"""
        self.last_save = time.monotonic()
        stop = self.reason is not None
        if self.dist.enabled:
            flag = torch.tensor([float(stop)], device=self.device)
            stop = bool(distributed.all_reduce_sum(flag, self.dist)[0] > 0)
            self.elsewhere = stop and self.reason is None
        return stop
