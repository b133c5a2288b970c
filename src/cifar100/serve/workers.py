"""`cifar100 serve --workers N`: N processes, each loading the model once and serving it, all
taking connections from one listening socket; this process only supervises them.

One process cannot use two cores for serving: its event loop and its model thread share one
interpreter. N processes of a core each can (measured in docs/serving.md). The service stays
one service:

- ready (/v2/health/ready) only while every worker is warm: each holds a flag in shared memory;
- /metrics counts every worker's requests, whichever answers it (prometheus-client's
  multiprocess mode, in a temporary directory removed at the end);
- SIGTERM or Ctrl-C here is passed to every worker, which finishes its requests in flight; the
  exit status is 0 when all of them stopped cleanly;
- a worker that dies is replaced (and the service is not ready until the new one is warm); one
  that dies before it was ever ready stops the whole service, since the next would too, with
  its error as the one line (a model that cannot be loaded).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time

import torch
from prometheus_client import multiprocess

from cifar100.errors import CifarError, ModelError
from cifar100.serve.process import announce, load_for_serving, run_server, setup_logging
from cifar100.serve.settings import ServeSettings

log = logging.getLogger("cifar100.serve")
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client reads it when imported
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_workers(sock, path: str, runtime: str | None, device: str, settings: ServeSettings,
                n: int, debug: bool = False) -> int:  # fmt: skip
    spawn = multiprocessing.get_context("spawn")  # fork is unsafe after torch's threads start
    metrics_dir = tempfile.mkdtemp(prefix="cifar100-metrics-")
    os.environ[METRICS_DIR_ENV] = metrics_dir  # for the workers, which inherit it
    ready = spawn.Array("b", n, lock=False)
    errors = spawn.SimpleQueue()  # a worker's one line, when it cannot start
    threads = max(1, torch.get_num_threads() // n)  # the free cores, shared out
    args = (sock, path, runtime, device, settings, ready, errors, threads, debug)

    def start(index: int):
        process = spawn.Process(target=_worker, args=(index, *args), name=f"worker-{index}")
        process.start()
        return process

    stop: list[int] = []
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda s, _: stop.append(s))
    processes = [start(i) for i in range(n)]
    was_ready = [False] * n
    announced, failed = False, False
    try:
        while not stop:
            time.sleep(0.2)
            for i, p in enumerate(processes):
                was_ready[i] = was_ready[i] or bool(ready[i])
                if p.is_alive():
                    continue
                ready[i] = 0
                _forget_metrics(p.pid)
                if not was_ready[i]:  # it could not start: the others will not either
                    failed = True
                    stop.append(signal.SIGTERM)
                    break
                log.error("worker %d (pid %d) died (exit %s); starting another", i, p.pid,
                          p.exitcode)  # fmt: skip
                processes[i], was_ready[i] = start(i), False
            if not announced and all(ready):
                announce(sock, f"{path} with {n} worker processes")
                announced = True
    finally:
        for p in processes:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        for p in processes:
            p.join(60)
            if p.is_alive():
                p.kill()
                p.join()
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if failed:
        why = errors.get() if not errors.empty() else "a worker stopped before it was ready"
        raise ModelError(why)
    return 0 if all(p.exitcode == 0 for p in processes) else 1


def _forget_metrics(pid: int | None) -> None:
    if pid is not None:
        multiprocess.mark_process_dead(pid)  # its live gauges (the queue) no longer count


def _worker(index: int, sock, path: str, runtime: str | None, device: str,
            settings: ServeSettings, ready, errors, threads: int,
            debug: bool) -> None:  # fmt: skip
    setup_logging(index, debug)
    torch.set_num_threads(threads)

    def all_ready(mine: bool) -> bool:
        ready[index] = int(mine)
        return all(ready)

    try:
        model = load_for_serving(path, runtime, device, may_lighten=False)
    except CifarError as e:
        errors.put(str(e))  # the supervisor says it, once
        raise SystemExit(2) from None
    raise SystemExit(run_server(model, settings, sock, all_ready))
