"""The search: Optuna's TPE over a space of settings, trials pruned on validation top-1,
the study kept in an RDB storage that several processes (or machines) work together.

    from cifar100.tune import load_space, tune
    result = tune(load_preset("cpu"), load_space("space.toml"), trials=30, out="runs/tune-cpu")
    result.best_value, result.best_config, result.page

Each worker loops: fail trials whose worker fell silent (queueing them again), ask for a
trial while the budget allows (storage.py), train it, tell the outcome. At the end it writes
OUT/best.toml (the best trial's settings, for `cifar100 train --config`) and OUT/study.html.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

import cifar100.tune.storage as stores
from cifar100.config import Config, validate
from cifar100.errors import CifarError, ConfigError
from cifar100.tune.best_config import write_best_config
from cifar100.tune.page import write_study_page
from cifar100.tune.space import Space
from cifar100.tune.trial import INTERRUPTED, Heartbeat, run_trial

PRUNERS = ("median", "hyperband", "none")
BEST_CONFIG = "best.toml"
PAGE = "study.html"


@dataclass
class TuneResult:
    study_name: str
    storage: str
    out: Path
    states: dict[str, int]  # the study's trials by state (all workers'), e.g. {"COMPLETE": 9}
    best_number: int | None = None
    best_value: float | None = None  # the best trial's validation top-1 (trial.py)
    best_params: dict = field(default_factory=dict)
    best_config: Path | None = None  # OUT/best.toml (None before any trial completes)
    page: Path | None = None
    stopped: str | None = None  # "interrupted" (Ctrl-C / SIGTERM), else None


def make_pruner(name: str | optuna.pruners.BasePruner, epochs: int) -> optuna.pruners.BasePruner:
    """median: below the median of earlier trials at the same epoch (after 5 trials);
    hyperband: successive halving over the epochs; none: every trial runs to its end (or
    any Optuna pruner, from Python)."""
    if isinstance(name, optuna.pruners.BasePruner):
        return name
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner {name!r}; choose {', '.join(PRUNERS)}")


def tune(
    cfg: Config,
    space: Space,
    trials: int,
    out: str | Path,
    storage: str | None = None,
    study_name: str | None = None,
    pruner: str | optuna.pruners.BasePruner = "median",
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> TuneResult:
    """Search `space` over `cfg` until the study holds `trials` trials (all its workers'
    together), maximizing each trial's validation top-1 (of the weights its run tests: its
    last epoch's, or its best epoch's after early stopping)."""
    if trials < 1:
        raise ConfigError(f"--trials {trials}: must be at least 1")
    out = Path(out)
    validate(space.apply(cfg, {}))  # the settings the space leaves alone, checked now
    url = stores.storage_url(storage, out)
    name = study_name or default_study_name(cfg, out)
    study = open_study(url, name, cfg, space, pruner)
    stop = None
    try:
        stop = _work(study, url, trials, cfg, space, out, cache_dir, progress)
    finally:
        result = summarize(study, url, out, cfg, space)
    if stop and stop != INTERRUPTED:
        raise CifarError(f"{stop} (the search stopped; the study keeps its trials: {url})")
    result.stopped = stop
    return result


def default_study_name(cfg: Config, out: Path) -> str:
    return f"{out.absolute().name}-{cfg.preset}"


def open_study(url: str, name: str, cfg: Config, space: Space, pruner) -> optuna.Study:
    """Create the study or join it (load_if_exists); refuse one begun for another search."""
    made = make_pruner(pruner, cfg.train.epochs)
    with stores.creation_lock(url):
        storage = stores.open_storage(url)  # (creates the tables: one process at a time)
        try:
            study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                        pruner=made, load_if_exists=True)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - SQLAlchemy's: a damaged or foreign file
            raise ConfigError(f"--storage {url}: cannot use it ({type(e).__name__}: {e})") from None
        attrs = study.user_attrs
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise ConfigError(f"study {name!r} in {url} minimizes: not a cifar100 search")
        ours = {"preset": cfg.preset, "space": space.digest()}
        if "space" not in attrs:
            for key, value in ours.items():
                study.set_user_attr(key, value)
        elif any(attrs.get(k) != v for k, v in ours.items()):
            raise ConfigError(f"study {name!r} in {url} was begun with another preset or "
                              "search space; give another --study (or --out)")  # fmt: skip
        # Each worker's sampler its own seed: a lone search repeats; two never draw alike.
        worker = int(attrs.get("workers", 0))
        study.set_user_attr("workers", worker + 1)
    study.sampler = optuna.samplers.TPESampler(seed=cfg.train.seed + worker)
    return study


def _work(study, url, budget, cfg, space, out, cache_dir, progress) -> str | None:
    """Run trials while the study's budget allows; why it stopped early, or None."""
    storage = stores.open_storage(url)  # this worker's own connection for its heartbeats
    while True:
        with warnings.catch_warnings():  # fail_stale_trials and ask() outside optimize() warn
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
            with stores.creation_lock(url):
                if not stores.may_ask(study, budget):
                    return None
                trial = study.ask()
        if stores.over_budget(study, trial.number, budget):
            trial.set_user_attr(stores.SURPLUS, True)
            study.tell(trial, state=TrialState.FAIL)
            return None
        with Heartbeat(storage, trial, stores.HEARTBEAT_S):
            outcome = run_trial(trial, cfg, space, out, cache_dir, progress)
        study.tell(trial, outcome.value, state=outcome.state)
        if outcome.stop == INTERRUPTED:  # its settings are tried again by the next worker
            stores.retry_trial(study, study._storage.get_trial(trial._trial_id))
        if outcome.stop:
            return outcome.stop


def summarize(study: optuna.Study, url: str, out: Path, cfg: Config, space: Space) -> TuneResult:
    """Write OUT/best.toml and OUT/study.html from the study as it stands."""
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    result = TuneResult(study.study_name, url, out, states)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if complete:
        best = max(complete, key=lambda t: (t.value, -t.number))
        result.best_number, result.best_value = best.number, best.value
        result.best_params = dict(best.params)
        result.best_config = write_best_config(
            out / BEST_CONFIG, best, cfg, space, study.study_name
        )
    result.page = write_study_page(out / PAGE, study)
    return result


def report_study(out: Path, storage: str | None = None, study_name: str | None = None) -> Path:
    """(Re)write OUT/study.html for an existing study (the only one in its storage, or
    `study_name`)."""
    url = stores.storage_url(storage, out)
    if stores.sqlite_path(url) is not None and not stores.sqlite_path(url).is_file():
        raise ConfigError(f"{stores.sqlite_path(url)}: no study here; give the search's --out")
    names = optuna.get_all_study_names(storage=stores.open_storage(url))
    if study_name is None and len(names) != 1:
        raise ConfigError(f"{url} holds {len(names)} studies ({', '.join(names) or 'none'}): "
                          "give --study NAME")  # fmt: skip
    name = study_name or names[0]
    if name not in names:
        raise ConfigError(f"no study {name!r} in {url}; it holds: {', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=name, storage=stores.open_storage(url))
    return write_study_page(out / PAGE, study)
