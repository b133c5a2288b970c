"""The service under load, measured with a load generator we did not write (wrk, Debian's), beside
our own (load_test.py) and the in-process batched throughput, all in one run on one machine.

    python benchmarks/serve_load.py runs/cpu-finetune                 # workers 1 and 2
    python benchmarks/serve_load.py runs/cpu-finetune --runtime onnx --seconds 20

For each server configuration: wrk POSTs real CIFAR-10 JPEGs (from ../shared/data, else
synthetic) as raw bodies to /predict from 32 and 128 connections for a fixed time, while a probe
asks /v2/health/ready every 100 ms with a 1 s timeout; then load_test.py's asyncio client sends
multipart requests. Loopback only, bounded in time, stops by itself. Prints one table: requests/s
and its ratio to in-process images/s (cifar100.load(...).predict, batches of 32, every core),
p50 and p99, errors, failed probes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import load_test  # noqa: E402 - its server, images, client and in-process baseline

WRK_SCRIPT = """
local bodies = {}
for i = 0, %(n)d - 1 do
  local f = io.open(string.format("%(dir)s/%%d.jpg", i), "rb")
  bodies[#bodies + 1] = f:read("*all")
  f:close()
end
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "/predict", {["Content-Type"] = "image/jpeg"}, bodies[i])
end
"""


def wrk(port: int, clients: int, seconds: float, script: Path) -> dict:
    """wrk's requests/s, p50 and p99 (ms) and non-200 count for `clients` connections."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{clients}", f"-d{seconds:g}s", "--latency", "--timeout", "10s",
         "-s", str(script), f"http://127.0.0.1:{port}/predict"],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout  # fmt: skip

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "errors": int(errors[1]) if errors else 0,
        "socket_errors": sum(map(int, socket.groups())) if socket else 0,
    }


class Probe:
    """GET /v2/health/ready every 100 ms with a 1 s timeout, as a readiness probe does."""

    def __init__(self, port: int) -> None:
        self.port, self.failed, self.sent, self.worst = port, 0, 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import http.client

        while not self._stop.wait(0.1):
            start = time.perf_counter()
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/v2/health/ready")
                ok = c.getresponse().status == 200
                c.close()
            except OSError:
                ok = False
            self.sent += 1
            self.failed += not ok
            self.worst = max(self.worst, time.perf_counter() - start)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("model", help="a run, checkpoint or export to serve")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--clients", type=int, nargs="+", default=[32, 128])
    p.add_argument("--seconds", type=float, default=15, help="per wrk step")
    p.add_argument("--requests", type=int, default=3000, help="per load_test.py step")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    images = load_test.jpegs(512)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, image in enumerate(images):
            (Path(tmp) / f"{i}.jpg").write_bytes(image)
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT % {"n": len(images), "dir": tmp})
        model = args.model
        if args.runtime == "onnx":  # served and run in-process alike from its export
            model = load_test.onnx_export(model, Path(tmp))
        baseline = load_test.in_process(model, images, 32, 15)
        print(f"in-process, batch 32, every core: {baseline:.1f} img/s", flush=True)
        for workers in args.workers:
            with load_test.server(model, "--workers", str(workers)) as (port, _):
                load_test.load(port, images, 8, 200, 30)  # warm every worker's paths
                for clients in args.clients:
                    with Probe(port) as probe:
                        row = wrk(port, clients, args.seconds, script)
                    row |= {"tool": "wrk", "workers": workers, "clients": clients,
                            "probes_failed": f"{probe.failed}/{probe.sent}",
                            "probe_worst_ms": probe.worst * 1000}  # fmt: skip
                    rows.append(row)
                    print(_row(row, baseline), flush=True)
                for clients in args.clients:
                    with Probe(port) as probe:
                        r = load_test.load(port, images, clients, args.requests, args.seconds * 2)
                    row = {"tool": "load_test.py", "workers": workers, "clients": clients,
                           "requests_s": r["requests_s"], "p50_ms": r["p50_ms"],
                           "p99_ms": r["p99_ms"], "errors": sum(r["errors"].values()),
                           "socket_errors": 0, "probes_failed": f"{probe.failed}/{probe.sent}",
                           "probe_worst_ms": probe.worst * 1000}  # fmt: skip
                    rows.append(row)
                    print(_row(row, baseline), flush=True)
    print(f"{args.model} ({args.runtime}); {load_test._machine()}")
    print(f"at {time.strftime('%Y-%m-%d %H:%M')}; load average {os.getloadavg()[0]:.2f} at the end")


def _row(r: dict, baseline: float) -> str:
    return (
        f"{r['tool']:<12} workers {r['workers']} {r['clients']:>3} clients: "
        f"{r['requests_s']:7.1f} req/s ({r['requests_s'] / baseline:.2f}x in-process)  "
        f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms ({r['p99_ms'] / r['p50_ms']:.1f}x)"
        f"  errors {r['errors'] + r['socket_errors']}  probes failed {r['probes_failed']} "
        f"(worst {r['probe_worst_ms']:.0f} ms)"
    )


if __name__ == "__main__":
    main()
