"""`cifar100 serve`: load a trained model, then run the service on uvicorn until SIGTERM or
Ctrl-C, which finish the requests in flight and exit 0."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from cifar100.errors import ConfigError, ModelError
from cifar100.serve.app import ServeSettings, create_app
from cifar100.trained_model import TrainedModel, load

RUNTIMES = ("torch", "onnx")


# A model this fast per image (with every free core) leaves the HTTP side (parsing, decoding,
# answering: about 1 ms of a core per request) as the bottleneck, so it gets one core less;
# a slower one gets them all. Measured on 2 cores (benchmarks/load_test.py): EfficientNet-Lite0
# at 64 px served 1,136 req/s with one model thread against 750 with two; the seed ResNet50V2
# at 224, 24.5 with one against about twice that with two.
LIGHT_S_PER_IMAGE = 0.005


def load_for_serving(path: str, runtime: str | None, device: str = "auto") -> TrainedModel:
    """The model at `path` in `runtime` (None: its own); a run or checkpoint for ONNX Runtime
    is exported to ONNX first, checked against PyTorch as `cifar100 export` checks it. On the
    CPU a light model leaves one core to the HTTP side (unless OMP_NUM_THREADS is set)."""
    model = load(path, device=device if runtime != "onnx" else "cpu")
    if runtime == "torch" and model.runtime == "onnx":
        raise ModelError(
            f"{path}: an ONNX export holds no PyTorch weights; serve its run, checkpoint or "
            "safetensors export with --runtime torch, or this file with --runtime onnx"
        )
    lighten = _is_light(model)
    if lighten:
        torch.set_num_threads(torch.get_num_threads() - 1)
    if runtime == "onnx" and model.runtime == "torch":
        return _as_onnx(model)
    if lighten and model.runtime == "onnx":
        from cifar100.export.onnx_runtime import load_onnx

        return load_onnx(model.source)  # its session takes the thread count when it is made
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
    import numpy as np

    from cifar100.export.formats import metadata
    from cifar100.export.onnx_file import export_onnx
    from cifar100.export.onnx_runtime import load_onnx, seal_onnx

    size = model.image_size
    check = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model.module.cpu(), size, metadata(model), onnx_path, check)
        seal_onnx(onnx_path)
        served = load_onnx(onnx_path)  # the session holds the graph: the file may go
    served.source = model.source
    return served


def serve(
    path: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    runtime: str | None = None,
    device: str = "auto",
    settings: ServeSettings | None = None,
) -> int:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    _check_address(host, port)  # before the model loads: a taken port is found in a second
    model = load_for_serving(path, runtime, device)
    app = create_app(model, settings or ServeSettings())
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,  # one line per request is ours, with its latency
        timeout_graceful_shutdown=30,
        log_level="warning",
    )
    _AnnouncingServer(config, model).run()
    return 0


def _check_address(host: str, port: int) -> None:
    """One clear line for an address that cannot be listened on (taken, or not this host's)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            sock.bind(address)
    except OSError as e:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host"
        ) from None


class _AnnouncingServer:
    """uvicorn's server, printing where the page is once the socket is bound."""

    def __init__(self, config, model: TrainedModel) -> None:
        import uvicorn

        outer = self

        class Server(uvicorn.Server):
            async def startup(self, sockets=None) -> None:
                await super().startup(sockets)
                if not self.should_exit:
                    outer.announce(self)

            @contextlib.contextmanager
            def capture_signals(self):
                # uvicorn raises a SIGTERM or SIGINT again once it has shut down, so that the
                # process dies of it; a stop it was asked for, done cleanly, is exit 0 here.
                with super().capture_signals():
                    yield
                    getattr(self, "_captured_signals", []).clear()

        self.server, self.model = Server(config), model

    def announce(self, server) -> None:
        sock = server.servers[0].sockets[0].getsockname()
        host, port = sock[0], sock[1]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}/"
        print(
            f"serving {self.model} at {url} (the page; API docs at {url}docs, Open Inference "
            f"Protocol at {url}v2)",
            flush=True,
        )

    def run(self) -> None:
        self.server.run()
