"""Out-of-fold class probabilities: what confident learning needs to find wrong labels.

Each training image is predicted by a head that never saw it: the images are split into k
stratified folds and k heads are trained on cached backbone features, each on k - 1 folds
(features mode's head and recipe, so a fold takes seconds once the features exist). Test
images, which no head saw, get the mean of the k heads' probabilities.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm

from cifar100.config import Config
from cifar100.engine.head_training import head_logits, train_head_epoch
from cifar100.engine.optim import build_optimizer
from cifar100.errors import DataError
from cifar100.models.head import make_head
from cifar100.schedule import finetune_lr


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's fold in 0..folds-1: every class spread evenly over the folds, seeded."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        # continue where the last class stopped, so that small classes do not all start at 0
        fold[idx] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)
    return fold


def fit_head(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: Config, epochs: int, seed: int
) -> torch.nn.Module:
    """The config's head trained on features `x` with its features-mode recipe."""
    m, t = cfg.model, cfg.train
    torch.manual_seed(seed)  # the head's initial weights
    head = make_head(x.shape[1], num_classes, m.head_units, m.dropout, m.activation,
                     m.leaky_slope)  # fmt: skip
    optimizer = build_optimizer([head], t, "features")
    steps = len(y) // min(t.batch_size, len(y))
    warmup = int(min(t.warmup_epochs, epochs / 2) * steps)
    lr_at = partial(finetune_lr, total_steps=epochs * steps, warmup_steps=warmup, peak=t.lr)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        train_head_epoch(head, x, y, optimizer, t.batch_size, t.label_smoothing, generator=gen,
                         lr_fn=lr_at, step0=epoch * steps)  # fmt: skip
    return head


def out_of_fold_probabilities(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    cfg: Config,
    folds: int = 5,
    epochs: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) softmax probabilities, float64: train out of fold, test the folds' mean."""
    if folds < 2:
        raise DataError(f"--folds {folds}: cross-validation needs at least 2 folds")
    if len(train_y) < 2 * folds:
        raise DataError(
            f"{len(train_y)} training images are too few for {folds} folds; give more images "
            "or fewer --folds"
        )
    epochs = epochs or cfg.train.epochs
    labels = train_y.numpy()
    fold = stratified_folds(labels, folds, seed)
    train_p = np.zeros((len(labels), num_classes))
    test_p = np.zeros((len(test_x), num_classes))
    for k in tqdm(range(folds), desc="cross-validation folds", disable=not progress):
        held = torch.from_numpy(fold == k)
        head = fit_head(train_x[~held], train_y[~held], num_classes, cfg, epochs, seed + k)
        train_p[held.numpy()] = _softmax(head_logits(head, train_x[held]))
        if len(test_x):
            test_p += _softmax(head_logits(head, test_x)) / folds
    return train_p, test_p


def _softmax(logits: torch.Tensor) -> np.ndarray:
    return logits.double().softmax(1).numpy()
