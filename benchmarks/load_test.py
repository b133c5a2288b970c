"""A bounded load test of `cifar100 serve`: a fixed number of requests, a time limit, loopback
only; it stops by itself. Against a real server process, batching on and off, beside the
in-process batched throughput of `cifar100.load(...).predict` in the same run.

    python benchmarks/load_test.py runs/cpu-finetune                    # the small model
    python benchmarks/load_test.py --seed --requests 400                 # the seed model at 224
    python benchmarks/load_test.py runs/cpu-finetune --memory 10000      # RSS over 10k requests

Each request is one real CIFAR-10 JPEG (from ../shared/data, else synthetic JPEGs) in a
multipart POST /predict. Clients are keep-alive connections on one asyncio loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
BOUNDARY = "load-test-boundary"


def jpegs(n: int) -> list[bytes]:
    """n real CIFAR-10 test JPEGs where the data is here, else synthetic ones."""
    out: list[bytes] = []
    if DATA.is_file():
        with tarfile.open(DATA) as tar:
            for m in tar:
                if "/test/" in m.name and m.name.endswith(".jpg"):
                    out.append(tar.extractfile(m).read())
                    if len(out) == n:
                        return out
    from PIL import Image

    rng = np.random.default_rng(0)
    while len(out) < n:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def body(image: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


@contextlib.contextmanager
def server(model: str, *options: str):
    """A `cifar100 serve` process on a free loopback port: (port, pid)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cifar100",
            "serve",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *options,
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line)[1])
        deadline = time.monotonic() + 180
        while _get(port, "/v2/health/ready") != 200:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the server did not get ready: {line}")
            time.sleep(0.2)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def _get(port: int, path: str) -> int:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", path)
        status = c.getresponse().status
        c.close()
        return status
    except OSError:
        return 0


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text)[1]) / 1024


def load(port: int, images: list[bytes], clients: int, requests: int, limit_s: float) -> dict:
    """`requests` POSTs from `clients` keep-alive connections, stopping at `limit_s` anyway.

    The client is asyncio on raw sockets with the requests prepared beforehand: on a 2-core
    machine it shares the cores with the server, and a thread per client spent most of one.
    """
    return asyncio.run(_load(port, images, clients, requests, limit_s))


async def _load(port: int, images: list[bytes], clients: int, requests: int, limit_s: float):
    prepared = [
        (
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(b)}\r\n\r\n"
        ).encode()
        + b
        for b in (body(im) for im in images)
    ]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(requests))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while loop.time() < deadline and (i := next(counter, None)) is not None:
                start = time.perf_counter()
                try:
                    writer.write(prepared[i % len(prepared)])
                    status = await _response(reader)
                    kind = None if status == 200 else str(status)
                except (OSError, ValueError, asyncio.IncompleteReadError) as e:
                    kind = type(e).__name__
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                if kind is None:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors[kind] = errors.get(kind, 0) + 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(p / 100 * len(ms)))] if ms else float("nan")

    return {
        "clients": clients,
        "ok": len(ms),
        "errors": errors,
        "seconds": wall,
        "requests_s": len(ms) / wall,
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
    }


async def _response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length framed, as uvicorn sends JSON); its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(x.split(":", 1)[1]) for x in lines if x.lower().startswith("content-length"))
    await reader.readexactly(length)
    return status


def in_process(model: str, images: list[bytes], batch: int, seconds: float) -> float:
    """Images/s of cifar100.load(model).predict on batches of encoded JPEGs (decoding included,
    as the service decodes), in a fresh process like the server's."""
    code = (
        "import sys, time, json, cifar100\n"
        "from cifar100.cpu_threads import fit_threads\n"
        "fit_threads()\n"
        "m = cifar100.load(sys.argv[1])\n"
        "data = json.load(open(sys.argv[2]))\n"
        "images = [bytes.fromhex(h) for h in data]\n"
        "batch, limit = int(sys.argv[3]), float(sys.argv[4])\n"
        "m.predict(images[:batch])\n"
        "n, start = 0, time.perf_counter()\n"
        "while time.perf_counter() - start < limit:\n"
        "    m.predict(images[n % len(images):][:batch]); n += min(batch, len(images))\n"
        "print(n / (time.perf_counter() - start))\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([im.hex() for im in images[: max(batch, 64)]], f)
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, model, f.name, str(batch), str(seconds)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        os.unlink(f.name)
    return float(out.stdout.strip().splitlines()[-1])


def onnx_export(model: str, folder: Path) -> str:
    """`cifar100 export MODEL --format onnx` into `folder` (checked on random images)."""
    out = folder / "model.onnx"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cifar100",
            "export",
            model,
            "--format",
            "onnx",
            "--out",
            str(out),
            "--cache-dir",
            str(folder / "cache"),
        ],  # fmt: skip
        check=True,
        capture_output=True,
    )
    return str(out)


def seed_checkpoint(folder: Path) -> str:
    """The report's seed model (random weights: speed does not depend on them) as a checkpoint."""
    from cifar100.config import load_preset
    from cifar100.models.registry import build_model
    from cifar100.runtime.checkpoint import save_checkpoint

    cfg = load_preset("seed")
    cfg.model.weights = "none"
    model = build_model(cfg.model, 100)
    path = folder / "seed.pt"
    save_checkpoint({"config": cfg.to_dict(), "classes": [f"class{i}" for i in range(100)],
                     "model": model.state_dict(), "image_size": 32}, path)  # fmt: skip
    return str(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("model", nargs="?", help="a run, checkpoint or export to serve")
    p.add_argument("--seed", action="store_true", help="serve the seed model at 224 instead")
    p.add_argument(
        "--onnx", action="store_true", help="serve (and run in-process) its ONNX export instead"
    )
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=2000, help="per load step")
    p.add_argument("--limit-s", type=float, default=120, help="per load step, at most")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--memory", type=int, default=0, help="then this many requests for RSS")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    images = jpegs(512)
    results: dict = {"machine": _machine(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        model = seed_checkpoint(Path(tmp)) if args.seed else args.model
        if model is None:
            p.error("give a MODEL, or --seed")
        if args.onnx:
            model = onnx_export(model, Path(tmp))
        results["model"] = model
        results["in_process_img_s"] = in_process(model, images, args.max_batch, 20)
        for label, options in (("batching", ["--max-batch", str(args.max_batch)]),
                               ("no batching", ["--max-batch", "1"])):  # fmt: skip
            with server(model, *options) as (port, pid):
                for clients in args.clients:
                    row = load(port, images, clients, args.requests, args.limit_s)
                    row["mode"] = label
                    row["ratio_to_in_process"] = row["requests_s"] / results["in_process_img_s"]
                    results["rows"].append(row)
                    print(_row(row), flush=True)
                if args.memory and label == "batching":
                    before = rss_mb(pid)
                    row = load(port, images, 32, args.memory, 3600)
                    results["memory"] = {
                        "requests": row["ok"],
                        "errors": row["errors"],
                        "rss_before_mb": before,
                        "rss_after_mb": rss_mb(pid),
                    }
                    print(f"memory: {results['memory']}", flush=True)
    print(f"in-process cifar100.load(...).predict, batch {args.max_batch}: "
          f"{results['in_process_img_s']:.1f} img/s; {results['machine']}")  # fmt: skip
    if args.json:
        print(json.dumps(results, indent=2))


def _row(r: dict) -> str:
    return (
        f"{r['mode']:<12} {r['clients']:>3} clients: {r['requests_s']:7.1f} req/s "
        f"({r['ratio_to_in_process']:.2f}x in-process)  p50 {r['p50_ms']:6.1f} ms  p95 "
        f"{r['p95_ms']:6.1f}  p99 {r['p99_ms']:6.1f}  errors {r['errors'] or 0}"
    )


def _machine() -> str:
    import platform

    import torch

    return (
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


if __name__ == "__main__":
    main()
