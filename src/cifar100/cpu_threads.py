"""How many CPU threads torch uses on a machine shared with other work.

torch's default is one OpenMP thread per core. Beside another busy process that collapses:
each parallel step waits for its slowest thread, the one that lost its core, while the others
spin (benchmarks/cpu_contention.py: on 2 cores beside one busy process, training ran at 0.3x
of its speed alone). `fit_threads` uses as many threads as there are cores that other
processes leave free, which keeps about a fair share instead.

A command chooses the count when it starts. A training run chooses it again between epochs
(`refit_threads`), so that a core another process held at the start is used once it is free
(and given back when another process takes it); results on the CPU depend on the count in the
last digits, so it never changes within an epoch, and a checkpoint records the count its run
goes on with, which a resume keeps. OMP_NUM_THREADS, when set, decides it instead (as torchrun
sets it for each worker, and as the test suite does).
"""

from __future__ import annotations

import os
import time

THREADS_ENV = "OMP_NUM_THREADS"


def usable_cores() -> list[int]:
    """The CPUs this process may run on (containers and taskset included)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def _busy_jiffies(cpus: set[int]) -> int | None:
    """Busy clock ticks so far on `cpus`, from /proc/stat (Linux); None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        ticks = [int(x) for x in rest.split()]
        busy += sum(ticks[:8]) - ticks[3] - ticks[4]  # all but idle and iowait (steal counts)
    return busy


def busy_cores_elsewhere(seconds: float = 0.25) -> float | None:
    """How many of our cores other processes kept busy over the next `seconds`."""
    cpus = set(usable_cores())
    tick = os.sysconf("SC_CLK_TCK")
    before, ours_before, start = _busy_jiffies(cpus), _own_cpu_s(), time.monotonic()
    if before is None:
        return None
    time.sleep(seconds)
    after, ours_after, wall = _busy_jiffies(cpus), _own_cpu_s(), time.monotonic() - start
    others = (after - before) / tick - (ours_after - ours_before)
    return max(0.0, others / wall)


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def fit_threads(keep: int | None = None, reserve: int = 0) -> int:
    """Set torch's thread count to the free cores (or to `keep`, a run's own count, when the
    machine has that many cores, so that a resumed run computes exactly as it began), less
    `reserve` cores left for other work of this process (the service's HTTP side). Returns the
    count; OMP_NUM_THREADS, when set, is left to decide it."""
    # torch on first use: the CLI's light commands run this module without it
    import torch

    if os.environ.get(THREADS_ENV):
        return torch.get_num_threads()
    cores = len(usable_cores())
    threads = keep if keep is not None and 1 <= keep <= cores else free_threads(reserve)
    torch.set_num_threads(threads)
    return threads


def free_threads(reserve: int = 0) -> int:
    """The cores other processes leave free now (measured over a quarter of a second), less
    `reserve`; at least one."""
    cores = len(usable_cores())
    busy = busy_cores_elsewhere()
    free = cores if busy is None else min(cores, round(cores - busy))
    return max(1, free - reserve)


def refit_threads() -> tuple[int, int] | None:
    """Between a run's epochs: fit the count to the cores free now. (old, new) where it
    changed, else None; None always when OMP_NUM_THREADS decides."""
    # torch on first use, as in fit_threads
    import torch

    if os.environ.get(THREADS_ENV):
        return None
    old, new = torch.get_num_threads(), free_threads()
    if new == old:
        return None
    torch.set_num_threads(new)
    return old, new
