"""One serving process: load the model, then serve it on uvicorn from a listening socket until
SIGTERM or Ctrl-C. server.py runs one such process; workers.py runs N of them."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import uvicorn
from uvicorn.server import HANDLED_SIGNALS

from cifar100.errors import ModelError
from cifar100.export.onnx_metadata import metadata, seal_onnx
from cifar100.runtime.trained_model import TrainedModel, load
from cifar100.serve.app import create_app
from cifar100.serve.protocol import guarded_protocol
from cifar100.serve.settings import ServeSettings

RUNTIMES = ("torch", "onnx")


# A model this fast per image (with every free core) leaves the HTTP side (parsing, decoding,
# answering: about 1 ms of a core per request) as the bottleneck, so it gets one core less;
# a slower one gets them all. Measured on 2 cores (benchmarks/load_test.py): EfficientNet-Lite0
# at 64 px served 1,136 req/s with one model thread against 750 with two; the seed ResNet50V2
# at 224, 24.5 with one against about twice that with two.
LIGHT_S_PER_IMAGE = 0.005


def load_for_serving(
    path: str, runtime: str | None, device: str = "auto", may_lighten: bool = True
) -> TrainedModel:
    """The model at `path` in `runtime` (None: its own); a run or checkpoint for ONNX Runtime
    is exported to ONNX first, checked against PyTorch as `cifar100 export` checks it. On the
    CPU a light model leaves one core to the HTTP side (unless OMP_NUM_THREADS is set, or
    `may_lighten` is False: a worker of several has its share of the cores already)."""
    model = load(path, device=device if runtime != "onnx" else "cpu")
    if runtime == "torch" and model.runtime == "onnx":
        raise ModelError(
            f"{path}: an ONNX export holds no PyTorch weights; serve its run, checkpoint or "
            "safetensors export with --runtime torch, or this file with --runtime onnx"
        )
    lighten = may_lighten and _is_light(model)
    if lighten:
        torch.set_num_threads(torch.get_num_threads() - 1)
    if runtime == "onnx" and model.runtime == "torch":
        return _as_onnx(model)
    if lighten and model.runtime == "onnx":
        return load(model.source)  # its session takes the thread count when it is made
    return model


def _is_light(model: TrainedModel) -> bool:
    """Whether the model, on the CPU with more than one thread, is fast enough per image that
    the HTTP side should have a core of its own."""
    if model.device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return False
    if torch.get_num_threads() < 2:
        return False
    size = model.image_size
    batch = torch.zeros(8, size, size, 3, dtype=torch.uint8)
    model.logits(batch, 8)  # the first call pays for allocations and kernel choice
    start = time.perf_counter()
    model.logits(batch, 8)
    return (time.perf_counter() - start) / len(batch) < LIGHT_S_PER_IMAGE


def _as_onnx(model: TrainedModel) -> TrainedModel:
    # Here, not at the top: onnx and its quantization tools take 0.3 s to import, which
    # `cifar100 serve` pays only with --runtime onnx.
    from cifar100.export.onnx_file import export_onnx

    size = model.image_size
    check = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model.module.cpu(), size, metadata(model), onnx_path, check)
        seal_onnx(onnx_path)
        served = load(onnx_path)  # the session holds the graph: the file may go
    served.source = model.source
    return served


def setup_logging(worker: int | None = None, debug: bool = False) -> None:
    """The service's own lines (the cifar100 loggers: one per request, ready, failures) on
    stderr from INFO up; other libraries' only from WARNING up, unless `debug`: their INFO is
    chatter to a user (the ONNX export of `--runtime onnx` alone logged some 75 lines)."""
    who = "" if worker is None else f"worker-{worker} "
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING,
                        format=f"%(asctime)s {who}%(message)s", stream=sys.stderr)  # fmt: skip
    logging.getLogger("cifar100").setLevel(logging.DEBUG if debug else logging.INFO)


def run_server(model: TrainedModel, settings: ServeSettings, sock, all_ready=None,
               announce: bool = False) -> int:  # fmt: skip
    """The service of `model` on uvicorn, taking connections from the listening `sock`, until
    SIGTERM or Ctrl-C; `all_ready` as create_app takes it."""
    app = create_app(model, settings, all_ready)
    monitoring = app.state.service.monitoring
    config = uvicorn.Config(
        app,
        http=guarded_protocol(settings.connection_limits(), monitoring.error),
        ws="none",  # no WebSocket routes: an upgrade would leave the guarded protocol
        access_log=False,  # one line per request is ours, with its latency
        timeout_graceful_shutdown=30,
        log_level="warning",
    )
    AnnouncingServer(config, model if announce else None).run(sockets=[sock])
    return 0


def announce(sock, what: object) -> None:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    print(
        f"serving {what} at {url} (the page; API docs at {url}docs, Open Inference Protocol "
        f"at {url}v2)",
        flush=True,
    )


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server, printing where the page is once the socket is bound (when given what
    it serves), and leaving a stop it was asked for as exit 0."""

    def __init__(self, config: uvicorn.Config, serving: object | None = None) -> None:
        super().__init__(config)
        self.serving = serving

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if not self.should_exit and self.serving is not None:
            announce(self.servers[0].sockets[0], self.serving)

    @contextlib.contextmanager
    def capture_signals(self):
        """uvicorn's own, but for its last step: it raises a SIGTERM or SIGINT again once it has
        shut down, so that the process dies of it; a stop asked for, done cleanly, is exit 0."""
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread may handle signals
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
