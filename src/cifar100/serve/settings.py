"""`cifar100 serve`'s settings: one dataclass that owns each default, which the command line
(cli/parser.py) reads for its flags and their help. Nothing here imports the service, so the
parser stays quick to load."""

from __future__ import annotations

from dataclasses import dataclass

from cifar100.errors import ConfigError


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may take before the application sees a request (protocol.py)."""

    max_head_bytes: int = 16 << 10  # request line and headers; as h11's and Node's default
    head_timeout_s: float = 10.0
    body_timeout_s: float = 30.0


@dataclass
class ServeSettings:
    """How the service batches and what a request may cost; each default is its flag's."""

    name: str = "cifar100"  # the model's name in the Open Inference Protocol
    max_batch: int = 32  # images per model call, gathered from concurrent requests
    # How long the first image of a batch waits for company. 0: a batch starts as soon as the
    # model is free, with every image that arrived while it was busy; measured best under load
    # (waiting idles the model while requests are still being read: 5 ms cost 40%).
    batch_wait_ms: float = 0.0
    max_queue: int = 256  # images waiting at most; beyond it: 503 with Retry-After
    max_request_mb: float = 16.0  # 413 beyond it
    max_images: int = 64  # images in one request; 413 beyond it
    max_pixels: int = 25_000_000  # per image, checked from its header before decoding
    max_request_pixels: int = 50_000_000  # all of a request's images, likewise
    max_inflight_mb: float = 256.0  # request bodies held at once; beyond: 503, Retry-After
    max_json_mb: float = 1.0  # a v2 request's JSON part: parsing it holds the interpreter
    max_head_kb: float = 16.0  # request line and headers; beyond: 431
    head_timeout_s: float = 10.0  # for the request head; beyond: 408
    body_timeout_s: float = 30.0  # for the request body, from the end of the head; 408
    top_k: int = 5  # /predict's default k
    # Images waiting for /explain (or being explained) at most; beyond: 503 with Retry-After.
    # Each takes the model's thread to itself for a forward and a backward pass, in turn with
    # the batches of /predict.
    max_explain_queue: int = 16

    def __post_init__(self) -> None:
        if self.max_inflight_mb < self.max_request_mb:  # its largest body could never be read
            raise ConfigError(
                f"--max-inflight-mb {self.max_inflight_mb:g} is less than --max-request-mb "
                f"{self.max_request_mb:g}: make it at least as large"
            )

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * (1 << 20))

    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(
            int(self.max_head_kb * 1024), self.head_timeout_s, self.body_timeout_s
        )
