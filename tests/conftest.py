"""Suite-wide safety: no test reaches the internet or the user's real cache, and results do not
depend on how busy the machine is."""

import os

import pytest

# The CLI fits torch's threads to the cores other work leaves free (cifar100.cpu_threads), and
# CPU results differ in their last digits with the thread count. Tests compare runs bit for bit,
# so the count is fixed here, before torch loads; test_cpu_threads.py tests the fitting itself.
# Under pytest-xdist (make test) its processes share the cores, with at least 2 threads each:
# much of a test's time is spent waiting (subprocesses, servers, a browser); 2 processes of 2
# threads on the 2-core VM ran the suite in 11 min 10 s, where one process took about 14.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_CORES = len(os.sched_getaffinity(0))
os.environ.setdefault("OMP_NUM_THREADS", str(min(_CORES, max(2, _CORES // _WORKERS))))


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch, tmp_path_factory):
    # Reaching a canonical URL in a test would be a bug: point downloads at a closed local port.
    monkeypatch.setenv("CIFAR100_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setenv("CIFAR100_WEIGHTS_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setenv("CIFAR100_CACHE", str(tmp_path_factory.getbasetemp() / "user-cache"))
    # `train`'s time estimate (seconds of timed steps) is tested in test_estimate.py alone.
    monkeypatch.setenv("CIFAR100_NO_ESTIMATE", "1")


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory):
    """One tiny trained run (tiny_run.train_tiny), trained once for the whole session: the
    tests that need some trained model take a copy of it (`tiny_run_copy`), not a training."""
    from tiny_run import train_tiny

    return train_tiny(tmp_path_factory.mktemp("tiny"))[0]  # root/run, root/cache, root/c10.tar.gz


@pytest.fixture(scope="module")
def tiny_run_copy(tiny_trained, tmp_path_factory):
    """This module's own copy of the session's tiny run (with the archive and cache beside it,
    as train_tiny leaves them), free to write into: a tenth of a second to copy, where training
    it took seconds."""
    import shutil

    root = shutil.copytree(tiny_trained.parent, tmp_path_factory.mktemp("tiny-copy") / "root")
    return root / tiny_trained.name
