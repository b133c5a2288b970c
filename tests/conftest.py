"""Suite-wide safety: no test reaches the internet or the user's real cache."""

import pytest


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch, tmp_path_factory):
    # Reaching a canonical URL in a test would be a bug: point downloads at a closed local port.
    monkeypatch.setenv("CIFAR100_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setenv("CIFAR100_WEIGHTS_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setenv("CIFAR100_CACHE", str(tmp_path_factory.getbasetemp() / "user-cache"))
