"""The `cifar100` command line's arguments: one subcommand each, with its help."""

from __future__ import annotations

import argparse
import math

from cifar100.serve.settings import ServeSettings  # owns the defaults of serve's flags
from cifar100.version import __version__

EPILOG = """examples:
  cifar100 train --preset seed                      the report's model and recipe on CIFAR-100
  cifar100 train --preset cpu --dataset folder --data images.tar.gz   (no GPU)
  cifar100 evaluate runs/20261125-120000-seed       test top-1/top-5, per class and superclass
  cifar100 evaluate RUN --tta flip --ema            mirror-image TTA, the EMA weights
  cifar100 compare runs/*                           one table of runs
  cifar100 predict runs/20261125-120000-seed cat.jpg dog.png
  cifar100 summary --preset seed                    the report's parameter table
"""
STRICT_HELP = (
    "refuse an image folder holding files that are not readable images, instead of skipping "
    "them with a warning (data.strict)"
)


def at_least(low: float, kind: type = int, strict: bool = False):
    """An argparse type: a `kind` number >= low (> low if `strict`), finite."""
    word = "a whole number" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {word}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(
                f"must be {word} {'>' if strict else '>='} {low:g}, got {text}"
            )
        return value

    parse.__name__ = "int" if kind is int else "float"  # argparse names the type in messages
    return parse


# `cifar100 serve`'s batching and limits: flag, type, lowest value (and whether it is excluded),
# metavar, help ({}: the default, which ServeSettings owns). The flag names the setting; a
# timeout's, in seconds, ends in "_s".
SERVE_LIMITS = [
    ("--max-batch", int, 1, False, "N",
     "images per model call, gathered from concurrent requests ({}; 1: no batching)"),
    ("--batch-wait-ms", float, 0, False, "MS",
     "how long a batch's first image waits for company ({}: a batch starts when the model is "
     "free, with the images that came while it was busy)"),
    ("--max-queue", int, 1, False, "N",
     "images waiting at most; beyond them requests get 503 with Retry-After ({})"),
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cifar100",
        description="Train, evaluate and use ImageNet-backbone image "
        "classifiers on CIFAR-100, CIFAR-10 and image folders.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"cifar100 {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    # --debug also works after the command name (`cifar100 train --debug`).
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show full tracebacks on errors",
    )

    t = sub.add_parser(
        "train",
        parents=[debug],
        help="train a model (a preset, a config file, overrides)",
        description="Train a classifier into a run directory holding its "
        "config, environment, metrics log and checkpoints.",
    )
    config_args(t)
    t.add_argument("--out", metavar="DIR", help="run directory (default: runs/<time>-<preset>)")
    t.add_argument(
        "--runs-root",
        default="runs",
        metavar="DIR",
        help="where new run directories go (default: ./runs)",
    )
    t.add_argument(
        "--init",
        metavar="RUN_OR_CHECKPOINT",
        help="start from this checkpoint's weights and model settings (model.init)",
    )
    t.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint"
    )
    common_args(t)

    e = sub.add_parser(
        "evaluate",
        parents=[debug],
        help="test accuracy of a run or checkpoint",
        description="Top-1 and top-5 test accuracy, macro-F1 and calibration (ECE), per "
        "class and (CIFAR-100) per superclass; printed, and written as JSON, with the "
        "predictions (logits, labels, images) beside it as predictions.npz. --checkpoint "
        "best, --ema and --tta write evaluation-best.json, -ema, -tta (and predictions-...) "
        "instead, so the run's own evaluation.json stays what report and compare read.",
    )
    e.add_argument(
        "target",
        metavar="RUN_OR_CHECKPOINT",
        help="a run directory, a checkpoint (.pt) or an export (.safetensors, .onnx)",
    )
    e.add_argument(
        "--checkpoint",
        choices=["last", "best"],
        default="last",
        help="which checkpoint of a run directory (default: last)",
    )
    e.add_argument("--data", metavar="PATH", help="read the test data from here instead")
    e.add_argument("--batch-size", type=at_least(1), metavar="N", help="images per inference batch")
    e.add_argument("--json", action="store_true", help="print the JSON result only")
    e.add_argument(
        "--output",
        metavar="FILE",
        help="write the JSON here (default: RUN_DIR/evaluation[-VARIANT].json)",
    )
    e.add_argument(
        "--tta",
        choices=["none", "flip"],
        default="none",
        help="test-time augmentation: flip = average the image's and its mirror's softmax "
        "(default: none)",
    )
    e.add_argument(
        "--ema", action="store_true", help="evaluate the checkpoint's EMA weights (train.ema_decay)"
    )
    common_args(e)

    rp = sub.add_parser(
        "report",
        parents=[debug],
        help="write a run's self-contained HTML report (plots, tables, config)",
        description="Write RUN_DIR/report.html: the model table as in the report, the resolved "
        "config and environment, the metrics and every plot (PNG and SVG in RUN_DIR/plots), "
        "images embedded so it opens offline. Built from the run directory's files alone, so "
        "an interrupted run can be reported too. A finished `cifar100 train` has written the "
        "predictions the confusion matrices and example images need; for a run stopped before "
        "its test, or an imported Keras model, run `cifar100 evaluate RUN_DIR` first.",
    )
    rp.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")

    c = sub.add_parser(
        "compare",
        parents=[debug],
        help="one table of several runs",
        description="Preset, backbone, weights, mode, epochs, best validation and test "
        "accuracy, wall time, throughput and device of each run directory.",
    )
    c.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")

    r = sub.add_parser(
        "predict",
        parents=[debug],
        help="classify image files with a trained model",
        description="Top-k classes with probabilities for each image (any size "
        "or mode), prepared exactly as in training. Exit code 1 if any image "
        "could not be read; the others are still predicted.",
    )
    r.add_argument(
        "checkpoint",
        metavar="RUN_OR_CHECKPOINT",
        help="a run directory, a checkpoint (.pt) or an export (.safetensors, .onnx)",
    )
    r.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files (any size or mode), or folders: the images under them",
    )
    r.add_argument(
        "-k",
        "--top",
        type=at_least(1),
        default=5,
        metavar="K",
        help="how many classes to show (default: 5)",
    )
    r.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    r.add_argument("--device", default="auto", help="auto | cuda | mps | cpu")

    s = sub.add_parser(
        "summary",
        parents=[debug],
        help="print the model's layer and parameter table",
        description="The report's table: layer, input and output shape, "
        "parameters (counting batch-norm moving statistics, as Keras does).",
    )
    config_args(s, data=False)
    s.add_argument(
        "--classes",
        type=at_least(1),
        metavar="N",
        help="number of classes (default: from the dataset)",
    )

    b = sub.add_parser(
        "backbones",
        parents=[debug],
        help="list the backbones with their weights, resolution and size",
        description="Each registered backbone with its weight sources, native resolution, "
        "input preprocessing and parameter count (Keras-style, batch-norm statistics "
        "included). Any timm model also works as --backbone timm:NAME where timm is installed.",
    )
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")

    n = sub.add_parser(
        "bench",
        parents=[debug],
        help="measure training and inference images/s against an eager fp32 baseline",
        description="Time a training step and an inference batch of a backbone on random data, "
        "as a plain eager fp32 model and as this tool runs it (channels-last, fused optimizer; "
        "bf16 autocast and cuDNN autotuning on CUDA; torch.compile with --compile), in the "
        "same process, and print "
        "the ratios. Absolute numbers on a shared machine are noisy; the ratio is not.",
    )
    n.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help="a trained model (run, checkpoint or export): its inference in PyTorch beside "
        "ONNX Runtime on the CPU, instead of a backbone's training and inference",
    )
    n.add_argument(
        "--backbone",
        default="resnet50v2",
        metavar="NAME",
        help="the backbone to time, with random weights (default: resnet50v2)",
    )
    n.add_argument(
        "--size",
        type=at_least(8),
        default=None,
        metavar="PX",
        help="input side (default: the backbone's native size, 224 for resnet50v2)",
    )
    n.add_argument(
        "--batch-size",
        type=at_least(1),
        default=64,
        metavar="N",
        help="images per step (default: 64)",
    )
    n.add_argument(
        "--steps",
        type=at_least(1),
        default=10,
        metavar="N",
        help="timed steps, of which the median is shown (default: 10)",
    )
    n.add_argument(
        "--warmup",
        type=at_least(0),
        default=3,
        metavar="N",
        help="untimed steps first (default: 3)",
    )
    n.add_argument("--compile", action="store_true", help="torch.compile the tuned variant")
    n.add_argument("--device", default="auto", help="auto | cuda | mps | cpu")
    n.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sub.add_parser(
        "presets",
        parents=[debug],
        help="list the shipped presets",
        description="List the presets shipped with cifar100.",
    )

    k = sub.add_parser(
        "import-keras",
        parents=[debug],
        help="bring in a trained Keras model of the report's architecture",
        description="Convert a Keras model of the report's architecture (.h5 or .keras, as "
        "model.save writes them; read with h5py, no TensorFlow needed) into a cifar100 run "
        "directory, to evaluate, predict with, or fine-tune (train --init RUN_DIR).",
    )
    k.add_argument("file", metavar="FILE", help="the Keras model file")
    k.add_argument("--out", required=True, metavar="DIR", help="the run directory to create")
    k.add_argument(
        "--dataset",
        choices=["cifar100", "cifar10", "folder"],
        default="cifar100",
        help="the data it was trained on, for class names (default: cifar100)",
    )
    k.add_argument("--data", metavar="PATH", help="that data's archive or folder")
    k.add_argument(
        "--class-names",
        metavar="FILE",
        help="a text file of class names, one per line in output order (instead of the data)",
    )
    k.add_argument(
        "--preprocess",
        choices=["tf", "torch", "none", "raw"],
        help="how the Keras model's inputs were scaled (the converted model takes 0..255 pixels "
        "and scales them itself): tf = x/127.5-1, ResNet50V2's and what a Rescaling(1/127.5, "
        "-1) layer in the model does (default); torch = x/255, then minus the ImageNet mean "
        "and over its std per RGB channel, as torchvision models expect; none = x/255; "
        "raw = 0..255 pixels unscaled",
    )
    common_args(k, device=False)

    x = sub.add_parser(
        "export",
        parents=[debug],
        help="write a trained model as ONNX, safetensors, Keras or a Triton model repository",
        description="Write a trained model (a run directory, a checkpoint, or a safetensors "
        "export) in a format other tools run: onnx (uint8 images in, probabilities and logits "
        "out, the scaling and upsampling inside; checked against PyTorch on the model's test "
        "images before it is written), safetensors (weights and settings, no pickle), keras "
        "(a .keras file for the report's ResNet50V2 architecture) or triton (a Triton "
        "Inference Server model repository around the ONNX graph). Each carries the model's "
        "classes, image size, settings and provenance.",
    )
    x.add_argument("target", metavar="RUN_OR_CHECKPOINT", help="a run directory or a model file")
    x.add_argument(
        "--format",
        required=True,
        choices=["onnx", "safetensors", "keras", "triton"],
        help="onnx: uint8 images in, probabilities out; safetensors: weights and settings; "
        "keras: a .keras file (ResNet50V2 models); triton: a Triton model repository",
    )
    x.add_argument(
        "--out", metavar="PATH", help="default: RUN_DIR/model.FORMAT (RUN_DIR/triton for triton)"
    )
    x.add_argument("--force", action="store_true", help="replace an existing output")
    x.add_argument(
        "--quantize",
        choices=["int8"],
        help="onnx, triton: ONNX Runtime static int8 quantisation, calibrated on training images",
    )
    x.add_argument(
        "--checkpoint",
        choices=["last", "best"],
        default="last",
        help="which checkpoint of a run directory (default: last)",
    )
    x.add_argument(
        "--name", default="cifar100", help="triton: the model's name (default: cifar100)"
    )
    x.add_argument(
        "--max-batch",
        type=at_least(1),
        default=64,
        metavar="N",
        help="triton: max_batch_size of the model config (default: 64)",
    )
    x.add_argument(
        "--data",
        metavar="PATH",
        help="the model's data, for the ONNX check and int8 calibration (default: its own)",
    )
    common_args(x, device=False)

    sv = sub.add_parser(
        "serve",
        parents=[debug],
        help="serve a trained model over HTTP: a web page, /predict and the Open Inference "
        "Protocol (v2)",
        description="Serve a trained model (a run, checkpoint or export) with FastAPI on "
        "uvicorn: the page at /, POST /predict (multipart images or a raw image body), the Open "
        "Inference Protocol that KServe and Triton speak under /v2, Prometheus metrics at "
        "/metrics and the API docs at /docs. Concurrent requests are batched together; "
        "SIGTERM or Ctrl-C finishes the requests in flight and exits 0.",
    )
    sv.add_argument("model", metavar="MODEL", help="a run directory, checkpoint or export")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sv.add_argument(
        "--port", type=at_least(0), default=8000, metavar="N", help="port (8000; 0: any free one)"
    )
    sv.add_argument(
        "--runtime",
        choices=["torch", "onnx"],
        help="run the model with PyTorch or ONNX Runtime (default: the model file's own; a "
        "run or checkpoint is exported to ONNX first)",
    )
    name = ServeSettings.name
    sv.add_argument("--name", default=name, help=f"the model's name under /v2 ({name})")
    for flag, kind, low, strict, metavar, help_text in SERVE_LIMITS:
        field = flag[2:].replace("-", "_")
        field += "_s" if field.endswith("timeout") else ""
        default = getattr(ServeSettings, field)
        sv.add_argument(
            flag,
            type=at_least(low, kind, strict),
            default=default,
            dest=field,
            metavar=metavar,
            help=help_text.format(f"{default:g}" if kind is float else default),
        )
    sv.add_argument(
        "--workers",
        type=at_least(1),
        default=1,
        metavar="N",
        help="server processes, each with its own copy of the model, sharing one port (1); "
        "on the CPU they share the cores",
    )
    sv.add_argument("--device", default="auto", help="auto | cuda | mps | cpu (PyTorch runtime)")

    d = sub.add_parser(
        "data",
        parents=[debug],
        help="download or decode a dataset and describe it",
        description="Fetch (or read) and cache a dataset, then print its splits "
        "and classes: useful to prepare an offline machine.",
    )
    d.add_argument(
        "--dataset",
        choices=["cifar100", "cifar10", "folder"],
        default="cifar100",
        help="which data (default: cifar100); folder needs --data",
    )
    d.add_argument("--data", metavar="PATH", help="archive, extracted folder or image folder")
    d.add_argument(
        "--image-size",
        type=at_least(8),
        default=32,
        metavar="N",
        help="image folders are decoded to N x N (default: 32)",
    )
    d.add_argument("--strict", action="store_true", help=STRICT_HELP)
    common_args(d, device=False)

    ca = sub.add_parser(
        "cache",
        parents=[debug],
        help="list or clear downloads, decoded data and feature caches",
        description="List what the cache holds (kind, size, last use), or clear it. `clear` "
        "removes by default only what is rebuilt without the network (decoded data, image "
        "folders, features, partial files); name kinds, or `all`, to remove downloads too.",
    )
    ca.add_argument(
        "action",
        nargs="?",
        choices=["list", "clear"],
        default="list",
        help="list the entries by kind (default), or clear them",
    )
    ca.add_argument(
        "kinds", nargs="*", metavar="KIND", help="downloads weights decoded folders features "
        "partial all (clear's default: decoded folders features partial)",
    )  # fmt: skip
    ca.add_argument(
        "--older-than",
        type=at_least(0, float),
        metavar="DAYS",
        help="only entries unused for DAYS days",
    )
    ca.add_argument(
        "--max-gb",
        type=at_least(0, float),
        metavar="N",
        help="least recently used first, until N GB remain",
    )
    ca.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    ca.add_argument("--cache-dir", metavar="DIR", help="default: $CIFAR100_CACHE or the user cache")
    return p


def config_args(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="seed (the report, default), cpu, ...: see `cifar100 presets`",
    )
    p.add_argument("--config", metavar="FILE", help="a TOML config file (may `extends` a preset)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set train.lr=3e-4 (repeatable)",
    )
    p.add_argument(
        "--backbone",
        metavar="NAME",
        help="backbone (model.backbone): resnet50v2, efficientnet_lite0/1/2, timm:NAME; "
        "see `cifar100 backbones`",
    )
    p.add_argument(
        "--dataset",
        choices=["cifar100", "cifar10", "folder"],
        help="which data (data.dataset); default: cifar100",
    )
    if data:
        p.add_argument(
            "--weights",
            metavar="SOURCE",
            help="backbone weights (model.weights): imagenet, none (from scratch) or a file",
        )
        p.add_argument(
            "--data",
            metavar="PATH",
            help="CIFAR archive or extracted folder, or "
            "an image folder / tarball (data.path); default: download CIFAR",
        )
        p.add_argument("--epochs", type=int, metavar="N", help="total epochs (train.epochs)")
        p.add_argument("--batch-size", type=int, metavar="N", help="train.batch_size")
        p.add_argument(
            "--lr", type=float, metavar="LR", help="fine-tuning peak learning rate (train.lr)"
        )
        p.add_argument("--seed", type=int, metavar="N", help="random seed (train.seed)")
        p.add_argument(
            "--deterministic",
            action="store_const",
            const="true",
            help="deterministic kernels only (train.deterministic)",
        )
        p.add_argument("--strict", action="store_const", const="true", help=STRICT_HELP)


def common_args(p: argparse.ArgumentParser, device: bool = True) -> None:
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="downloads and decoded data (default: $CIFAR100_CACHE or the user cache dir)",
    )
    if device:
        p.add_argument("--device", default=None, help="auto | cuda | mps | cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
