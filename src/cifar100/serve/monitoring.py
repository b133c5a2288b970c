"""The service's Prometheus metrics (prometheus-client), in a registry of its own so that two
services in one process (tests) never share counters. Under `serve --workers N` (workers.py
sets PROMETHEUS_MULTIPROC_DIR) every worker writes its values to that directory and /metrics,
whichever worker answers it, reads them all: counts are summed, the queue is the live sum."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Monitoring:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "cifar100_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "cifar100_request_seconds", "Time to answer a request", ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_images = Histogram(
            "cifar100_batch_images", "Images per model call", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "cifar100_batch_seconds", "Time of one model call", buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.queue = Gauge(
            "cifar100_queue_images", "Images waiting for the model", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.errors = Counter(
            "cifar100_errors", "Requests refused or failed, by kind", ["kind"], registry=r
        )
        self.predicted = Counter("cifar100_images", "Images classified", registry=r)
        self.explained = Counter("cifar100_explained_images", "Images explained", registry=r)

    def queue_changed(self, waiting: int) -> None:
        self.queue.set(waiting)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_images.observe(images)
        self.batch_seconds.observe(seconds)

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def images(self, n: int) -> None:
        self.predicted.inc(n)

    def explanations(self, n: int) -> None:
        self.explained.inc(n)

    def exposition(self) -> tuple[bytes, str]:
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not shared:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        everyone = CollectorRegistry()
        multiprocess.MultiProcessCollector(everyone, shared)
        return generate_latest(everyone), CONTENT_TYPE_LATEST
