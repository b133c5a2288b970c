"""Suite-wide safety: no test reaches the internet or the user's real cache, and results do not
depend on how busy the machine is."""

import os

import pytest

# The CLI fits torch's threads to the cores other work leaves free (cifar100.cpu_threads), and
# CPU results differ in their last digits with the thread count. Tests compare runs bit for bit,
# so the count is fixed here, before torch loads; test_cpu_threads.py tests the fitting itself.
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch, tmp_path_factory):
    # Reaching a canonical URL in a test would be a bug: point downloads at a closed local port.
    monkeypatch.setenv("CIFAR100_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setenv("CIFAR100_WEIGHTS_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setenv("CIFAR100_CACHE", str(tmp_path_factory.getbasetemp() / "user-cache"))
