"""`cifar100 serve`: load a trained model, then run the service on uvicorn until SIGTERM or
Ctrl-C, which finish the requests in flight and exit 0. With `workers` > 1, that many processes
(workers.py) each load the model and take connections from one listening socket; with one, this
process serves (process.py)."""

from __future__ import annotations

import socket

from cifar100.errors import ConfigError
from cifar100.serve.process import load_for_serving, run_server, setup_logging
from cifar100.serve.settings import ServeSettings
from cifar100.serve.workers import run_workers


def serve(
    path: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    runtime: str | None = None,
    device: str = "auto",
    settings: ServeSettings | None = None,
    workers: int = 1,
    debug: bool = False,
) -> int:
    """Serve the model at `path` until SIGTERM or Ctrl-C; `debug`: other libraries' INFO log
    lines too (process.setup_logging)."""
    setup_logging(debug=debug)
    settings = settings or ServeSettings()
    sock = listen(host, port)  # before the model loads: a taken port is found in a second
    if workers > 1:
        return run_workers(sock, path, runtime, device, settings, workers, debug)
    model = load_for_serving(path, runtime, device)
    return run_server(model, settings, sock, announce=True)


def listen(host: str, port: int):
    """A socket listening on host:port, or one clear line for an address that cannot be
    listened on (taken, or not this host's)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)  # uvicorn's default backlog
        sock.set_inheritable(True)
    except OSError as e:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host"
        ) from None
    return sock
