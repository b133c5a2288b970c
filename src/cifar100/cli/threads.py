"""Torch's CPU threads for a command: the cores other processes leave free."""

from __future__ import annotations

import sys


def use_free_cores(keep: int | None = None, say: bool = False, reserve: int = 0) -> None:
    """Fit the thread count (cifar100.cpu_threads); with `say`, tell when cores are busy."""
    from cifar100.cpu_threads import fit_threads, usable_cores  # keeps the CLI's start fast

    threads, cores = fit_threads(keep, reserve), len(usable_cores())
    if say and threads < cores and keep is None:
        print(
            f"note: {cores - threads} of {cores} CPU cores are busy with other work: using "
            f"{threads} thread{'s' * (threads > 1)} (OMP_NUM_THREADS=N sets the count)",
            file=sys.stderr,
        )
