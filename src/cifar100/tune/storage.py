"""Where a study lives (Optuna's RDB storage: a SQLite file, or any SQLAlchemy URL) and how
several worker processes share it without running more than the study's trials.

The budget: `--trials N` is the study's total. A trial counts once it is created (running,
waiting, complete, pruned, or failed for good); a trial that failed and was queued again
(a crashed worker's, found by its stale heartbeat, or one stopped by Ctrl-C) counts once,
through its retry. Each worker asks for a new trial only while fewer than N count, under
a lock that makes count-then-create one step: a file lock beside a SQLite file (the
processes of one machine), none for a database server, whose workers may then create one
surplus trial in a race; such a trial is told failed at once, marked "surplus", and never
trains.
"""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from cifar100.errors import ConfigError

HEARTBEAT_S = 30  # a running trial's worker writes its heartbeat this often
GRACE_S = 120  # one not heard from for this long is taken for crashed, failed and retried
MAX_RETRY = 2  # a crashed trial's settings are tried again at most this often
SQLITE_TIMEOUT_S = 60  # writers wait this long for SQLite's lock before "database is locked"
LOCK_SUFFIX = "-create-lock"  # beside a SQLite file: workers count and create trials in turn
SURPLUS = "surplus"  # user attr of a trial created past the budget (never trained)


def storage_url(storage: str | None, out: Path) -> str:
    """--storage as given, or a SQLite file beside the runs (OUT/study.db)."""
    if storage:
        return storage
    return f"sqlite:///{(out / 'study.db').absolute()}"


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite:/// URL; None for other databases (and an in-memory SQLite)."""
    if not url.startswith("sqlite:///") or url in ("sqlite:///:memory:", "sqlite://"):
        return None
    return Path(url[len("sqlite:///") :])


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats, crashed trials retried, SQLite's writers patient."""
    path = sqlite_path(url)
    kwargs: dict = {}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Several processes write one file: each waits its turn instead of failing at once.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    # Optuna 4.9 renamed failed_trial_callback (still accepted, with a warning).
    params = inspect.signature(optuna.storages.RDBStorage).parameters
    name = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else (
        "failed_trial_callback")  # fmt: skip
    for attempt in (1, 2):  # servers' workers creating the tables at once: one tries again
        try:
            with warnings.catch_warnings():  # heartbeats and retries: "experimental" since 2.8
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                kwargs[name] = _retry()
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, **kwargs
                )
        except ImportError as e:  # a server's driver (psycopg2, pymysql) not installed
            raise ConfigError(f"--storage {url}: {e}; install the database's driver") from None
        except Exception as e:  # noqa: BLE001 - SQLAlchemy's errors: a bad URL, no server
            if attempt == 2:
                raise ConfigError(
                    f"--storage {url}: cannot open ({type(e).__name__}: {e})"
                ) from None
    raise AssertionError("unreachable")


def _retry():
    """Optuna's callback that queues a failed trial's settings again, up to MAX_RETRY times."""
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    retry = retry or optuna.storages.RetryFailedTrialCallback  # Optuna < 4.9
    return retry(max_retry=MAX_RETRY)


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue `trial`'s settings again, as Optuna does for a crashed worker's trial."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _retry()(study, trial)


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count toward the budget: all but surplus ones and failed ones that
    were queued again (their retry counts in their place)."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [
        t
        for t in trials
        if not t.user_attrs.get(SURPLUS)
        and not (t.state == TrialState.FAIL and t.number in retried)
    ]


def finished(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Complete and pruned trials: the search's results."""
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def may_ask(study: optuna.Study, budget: int) -> bool:
    """Whether a worker may ask for a trial: one is waiting (a retry), or fewer than `budget`
    count."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    return len(counted(trials)) < budget


def over_budget(study: optuna.Study, number: int, budget: int) -> bool:
    """Whether trial `number` is past the budget (a race between servers' workers)."""
    ahead = [t for t in counted(study.get_trials(deepcopy=False)) if t.number < number]
    return len(ahead) >= budget


@contextlib.contextmanager
def creation_lock(url: str) -> Iterator[None]:
    """Count-then-create as one step among this machine's processes sharing a SQLite file."""
    path = sqlite_path(url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}{LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
