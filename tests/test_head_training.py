"""The head trained alone on features: epochs, evaluation, edge cases."""

import pytest
import torch

from cifar100.engine.head_training import evaluate_head, train_head_epoch
from cifar100.models.head import make_head


def _separable(n=512, dim=32, classes=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 4
    labels = torch.arange(n) % classes
    return centres[labels] + torch.randn(n, dim, generator=g), labels


def test_head_reaches_full_accuracy_on_separable_features():
    feats, labels = _separable()
    torch.manual_seed(0)
    head = make_head(32, 8, units=32)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    seen_steps = []

    def lr_fn(step):
        seen_steps.append(step)
        return 3e-3

    step = 0
    for _ in range(5):
        stats = train_head_epoch(head, feats, labels, optimizer, 32, 0.1, gen, lr_fn, step)
        step += stats["steps"]
    assert stats["steps"] == 512 // 32 and seen_steps == list(range(5 * 16))
    assert head.training
    assert stats["train_top1"] > 0.97 and stats["images_per_s"] > 0
    result = evaluate_head(head, feats, labels, batch_size=100)
    assert result["top1"] == 1.0 and result["top5"] == 1.0 and result["loss"] < 0.1
    assert head.training  # evaluation restores the caller's mode


def test_head_epoch_edge_cases():
    feats, labels = _separable(n=10)
    head = make_head(32, 8, units=16)
    optimizer = torch.optim.Adam(head.parameters())
    stats = train_head_epoch(head, feats, labels, optimizer, batch_size=64)
    assert stats["steps"] == 1  # fewer rows than a batch: one batch of all of them
    with pytest.raises(ValueError):
        train_head_epoch(head, feats[:1], labels[:1], optimizer, batch_size=64)
