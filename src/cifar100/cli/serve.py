"""`cifar100 serve`: a trained model over HTTP (the page, /predict, the Open Inference Protocol)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from cifar100.cli.args import DEVICE_DEFAULT_HELP, at_least
from cifar100.cli.threads import use_free_cores
from cifar100.serve.settings import ServeSettings  # owns the defaults of the flags below

HELP = "serve a trained model over HTTP: a web page, /predict and the Open Inference Protocol (v2)"
DESCRIPTION = (
    "Serve a trained model (a run, checkpoint or export) with FastAPI on uvicorn: the page at "
    "/, POST /predict (multipart images or a raw image body), POST /explain (where the model "
    "looked, as heat maps), the Open Inference Protocol that "
    "KServe and Triton speak under /v2, Prometheus metrics at /metrics and the API docs at "
    "/docs. Concurrent requests are batched together; SIGTERM or Ctrl-C finishes the requests "
    "in flight and exits 0."
)

# The flags of ServeSettings' fields: flag, type, lowest value (and whether it is excluded),
# metavar, help ({}: the default, which ServeSettings owns). The flag names the field; a
# timeout's, in seconds, ends in "_s". A text setting has no type and no lowest value.
SETTINGS_FLAGS = [
    ("--name", str, None, False, None, "the model's name under /v2 ({})"),
    ("--max-batch", int, 1, False, "N",
     "images per model call, gathered from concurrent requests ({}; 1: no batching)"),
    ("--batch-wait-ms", float, 0, False, "MS",
     "how long a batch's first image waits for company ({}: a batch starts when the model is "
     "free, with the images that came while it was busy)"),
    ("--max-queue", int, 1, False, "N",
     "images waiting at most; beyond them requests get 503 with Retry-After ({})"),
    ("--max-explain-queue", int, 1, False, "N",
     "images waiting for /explain at most ({}); beyond them: 503 with Retry-After. Each "
     "takes the model to itself, in turn with /predict's batches"),
    ("--max-request-mb", float, 0, True, "MB", "largest request body ({}); larger ones get 413"),
    ("--max-images", int, 1, False, "N", "images in one request at most ({}); more get 413"),
    ("--max-pixels", int, 1, False, "N",
     "pixels of one image at most, read from its header before decoding ({})"),
    ("--max-request-pixels", int, 1, False, "N",
     "pixels of all of a request's images together at most, read from their headers before "
     "any is decoded ({})"),
    ("--max-inflight-mb", float, 0, True, "MB",
     "request bodies held at once across all requests ({}); beyond it: 503 with Retry-After"),
    ("--max-json-mb", float, 0, True, "MB",
     "largest JSON part of a v2 inference request ({}); larger ones get 413 (send binary "
     "tensor data instead)"),
    ("--max-head-kb", float, 1, False, "KB",
     "largest request head, the request line and headers ({}); larger ones get 431"),
    ("--head-timeout", float, 0, True, "S",
     "seconds for a request head to arrive ({}); then 408 and the connection closes"),
    ("--body-timeout", float, 0, True, "S",
     "seconds for a request body to arrive after its head ({}); then 408 and the connection "
     "closes"),
]  # fmt: skip


def settings_field(flag: str) -> str:
    """The ServeSettings field a flag sets: --max-batch max_batch, --head-timeout head_timeout_s."""
    field = flag[2:].replace("-", "_")
    return field + "_s" if field.endswith("timeout") else field


def add_settings_flags(p: argparse.ArgumentParser) -> None:
    for flag, kind, low, strict, metavar, help_text in SETTINGS_FLAGS:
        field = settings_field(flag)
        default = getattr(ServeSettings, field)
        p.add_argument(
            flag,
            type=at_least(low, kind, strict) if low is not None else None,
            default=default,
            dest=field,
            metavar=metavar,
            help=help_text.format(f"{default:g}" if kind is float else default),
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a run directory, checkpoint or export")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument(
        "--port", type=at_least(0), default=8000, metavar="N", help="port (8000; 0: any free one)"
    )
    p.add_argument(
        "--runtime",
        choices=["torch", "onnx"],
        help="run the model with PyTorch or ONNX Runtime (default: the model file's own; a "
        "run or checkpoint is exported to ONNX first)",
    )
    add_settings_flags(p)
    p.add_argument(
        "--workers",
        type=at_least(1),
        default=1,
        metavar="N",
        help="server processes, each with its own copy of the model, sharing one port (1); "
        "on the CPU they share the cores",
    )
    p.add_argument(
        "--device", default="auto", help=f"{DEVICE_DEFAULT_HELP}; for the PyTorch runtime"
    )


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: the service loads torch.
    from cifar100.serve.server import serve

    use_free_cores()  # a light model then leaves one to the HTTP side (serve.process)
    given = {f.name: getattr(args, f.name) for f in fields(ServeSettings) if hasattr(args, f.name)}
    settings = ServeSettings(**given)
    return serve(
        args.model,
        args.host,
        args.port,
        args.runtime,
        args.device,
        settings,
        args.workers,
        debug=args.debug,  # other libraries' INFO lines too
    )
