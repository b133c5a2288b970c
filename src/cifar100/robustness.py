"""Accuracy under corruption: a trained model's top-1 and calibration on its test images under
the common corruptions (cifar100.corruptions), each at each severity, beside the clean images'.

    result = evaluate_corruptions("runs/lite", ["fog", "noise"], severities=[1, 5], images=1000)
    result.mean_top1, result.relative_top1, result.cell("fog", 5)
    result.write(RunDir("runs/lite").corruption_evaluation)

The same images every time: the subset (`images`) is drawn per class from `seed`, and each
image's corruption is seeded by (seed, corruption, severity, its index in the whole test split),
so an image is corrupted alike in a subset and in the whole set.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from cifar100.calibration import scores
from cifar100.corruptions import CORRUPTIONS, FAMILIES, FAMILY_ORDER, SEVERITIES, corrupt
from cifar100.corruptions import default_table as table_for_size
from cifar100.errors import ConfigError
from cifar100.evaluate import model_data
from cifar100.runtime.corruption_evaluation import CorruptionEvaluation
from cifar100.runtime.trained_model import load

CHUNK = 1000  # images corrupted at once: bounds the float copies the corruptions make

__all__ = [
    "corruption_names",
    "evaluate_corruptions",
    "severity_list",
    "stratified_subset",
]


def corruption_names(text: str | Iterable[str] | None = None) -> list[str]:
    """The corruptions a selection names, in CORRUPTIONS' order: None, "" or "all" for all 15;
    else names and family names (noise, blur, weather, digital), comma-separated or as a list.
    ConfigError listing the valid ones for any other word."""
    words = _words(text)
    if not words or words == ["all"]:
        return list(CORRUPTIONS)
    chosen: set[str] = set()
    for word in words:
        if word in FAMILY_ORDER:
            chosen.update(n for n in CORRUPTIONS if FAMILIES[n] == word)
        elif word in CORRUPTIONS:
            chosen.add(word)
        else:
            raise ConfigError(
                f"--corruptions: unknown corruption {word!r}; choose from all, the families "
                f"{', '.join(FAMILY_ORDER)}, or {', '.join(CORRUPTIONS)}"
            )
    return [n for n in CORRUPTIONS if n in chosen]


def severity_list(text: str | Iterable[int] | None = None) -> list[int]:
    """Severities from "1,3,5" (or a list), sorted without repeats; None for all (1..5)."""
    if text is None:
        return list(SEVERITIES)
    words = _words(text) if isinstance(text, str) else [str(s) for s in text]
    valid = ", ".join(map(str, SEVERITIES))
    found = []
    for word in words:
        if not word.isdigit() or int(word) not in SEVERITIES:
            raise ConfigError(f"--severities: {word!r} is not a severity; give some of {valid}")
        found.append(int(word))
    if not found:
        raise ConfigError(f"--severities: none given; give some of {valid}, e.g. 1,3,5")
    return sorted(set(found))


def _words(text: str | Iterable[str] | None) -> list[str]:
    if text is None:
        return []
    parts = text.split(",") if isinstance(text, str) else list(text)
    return [p.strip().lower() for p in parts if p.strip()]


def stratified_subset(labels: torch.Tensor | np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of `n` of the images, each class represented in its share of them: each
    class gets the floor of its share, the images left over go to the classes with the
    largest remainders (ties to the lower class). Drawn per class from `seed`; all images
    where `n` is not fewer."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * n / len(labels)
    quota = np.floor(share).astype(int)
    order = np.lexsort((classes, -(share - quota)))  # largest remainder first
    quota[order[: n - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = []
    for c, k in zip(classes, quota):
        idx = np.flatnonzero(labels == c)
        picked.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(picked))


def evaluate_corruptions(
    target: str | Path,
    corruptions: str | Iterable[str] | None = None,
    severities: str | Sequence[int] | None = None,
    images: int | None = None,
    seed: int = 0,
    table: str | None = None,
    data_path: str | None = None,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
) -> CorruptionEvaluation:
    """Top-1 and ECE of a trained model (a run directory, a checkpoint or an export) on its
    test split (or `images` of it, a seeded class-stratified subset), clean and under each of
    `corruptions` (default: all 15) at each of `severities` (default 1..5). The ECE is of the
    model's calibrated probabilities where it has a temperature. `table`: the corruption
    parameters, "cifar" or "imagenet" (default by image size)."""
    names, levels = corruption_names(corruptions), severity_list(severities)
    if images is not None and images < 1:
        raise ConfigError(f"--corruption-images {images}: give at least 1")
    start = time.perf_counter()
    model = load(target, device=device)
    splits = model_data(model, data_path, cache_dir, progress)
    test = splits.test
    index = stratified_subset(test.labels, images if images is not None else len(test), seed)
    pixels, labels = test.images[torch.from_numpy(index)], test.labels[torch.from_numpy(index)]
    table = table or table_for_size(*pixels.shape[1:3])
    batch_size = batch_size or model.info.config.train.eval_batch_size
    temperature = model.info.temperature

    def measure(x: torch.Tensor) -> dict[str, float]:
        logits = model.logits(x, batch_size)
        top1 = float((logits.argmax(1) == labels).double().mean())
        return {"top1": top1, "ece": scores(logits, labels, temperature or 1.0)["ece"]}

    clean = measure(pixels)
    cells: dict[str, dict[int, dict[str, float]]] = {n: {} for n in names}
    with _bar(len(names) * len(levels), progress) as bar:
        for name in names:
            for severity in levels:
                bar.set_postfix_str(f"{name} {severity}")
                hurt = _corrupted(pixels, index, name, severity, seed, table)
                cells[name][severity] = measure(hurt)
                bar.update()
    return _record(model, splits, index, seed, table, clean, cells, time.perf_counter() - start)


def _corrupted(pixels, index, name, severity, seed, table) -> torch.Tensor:
    """corrupt() in chunks of CHUNK images, each image seeded by its index in the test split."""
    chunks = [
        corrupt(pixels[i : i + CHUNK], name, severity, seed, table, index[i : i + CHUNK])
        for i in range(0, len(index), CHUNK)
    ]
    return torch.cat(chunks)


def _bar(total: int, progress: bool):
    from tqdm.auto import tqdm  # as the inference loop: a bar on a terminal only

    return tqdm(total=total, desc="corruptions", unit="cell", disable=None if progress else True,
                leave=False)  # fmt: skip


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def _record(model, splits, index, seed, table, clean, cells, seconds) -> CorruptionEvaluation:
    corruptions = {
        name: {
            "family": FAMILIES[name],
            "severities": {str(s): v for s, v in by_severity.items()},
            "mean_top1": _mean(v["top1"] for v in by_severity.values()),
            "mean_ece": _mean(v["ece"] for v in by_severity.values()),
        }
        for name, by_severity in cells.items()
    }
    families = {
        family: {
            key: _mean(c[key] for c in corruptions.values() if c["family"] == family)
            for key in ("mean_top1", "mean_ece")
        }
        for family in FAMILY_ORDER
        if any(c["family"] == family for c in corruptions.values())
    }
    every = [v for by_severity in cells.values() for v in by_severity.values()]
    mean_top1 = _mean(v["top1"] for v in every)
    return CorruptionEvaluation.of(
        checkpoint=str(model.source),
        runtime=model.runtime,
        dataset=splits.name,
        epoch=model.info.epoch,
        images=len(index),
        test_images=len(splits.test),
        seed=seed,
        table=table,
        temperature=model.info.temperature,
        clean=clean,
        corruptions=corruptions,
        families=families,
        mean_top1=mean_top1,
        relative_top1=mean_top1 / clean["top1"] if clean["top1"] else None,
        mean_ece=_mean(v["ece"] for v in every),
        seconds=round(seconds, 1),
        threads=torch.get_num_threads(),  # CPU threads (ONNX Runtime is given as many)
    )
