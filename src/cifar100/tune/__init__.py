"""Hyper-parameter search on Optuna (`cifar100 tune`): a space of settings (space.py), trials
that are normal run directories (trial.py), a study shared through Optuna's RDB storage
(storage.py), the best settings as a config file (best_config.py) and a page (page.py).

    from cifar100.config import load_preset
    from cifar100.tune import load_space, tune
    result = tune(load_preset("cpu"), load_space("space.toml"), trials=30, out="runs/tune-cpu")

Needs Optuna: pip install 'cifar100[tune]'.
"""

from cifar100.tune.space import Param, Space, load_space, parse_space
from cifar100.tune.study import TuneResult, tune

__all__ = ["Param", "Space", "TuneResult", "load_space", "parse_space", "tune"]
