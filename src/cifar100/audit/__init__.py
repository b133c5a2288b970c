"""`cifar100 audit`: wrong labels, duplicates, train/test leaks and outliers in a dataset.

    result = audit("images.tar.gz")           # an image folder or tarball, a CIFAR archive
    result = audit("runs/20261207-cpu")       # a run: the data it trained on
    cifar100 train ... --exclude result.csv   # then train without the flagged images

Backbone features (features mode's, from its cache) feed everything: k heads trained on k-1
folds each give every image a probability it was not trained on, and confident learning
(cleanlab) flags the labels those probabilities contradict; cosine similarity of the
features finds near copies, their k-nearest-neighbour distance outliers. Writes audit.csv,
audit.html and audit.json into one folder, each atomically.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar100.audit.folds import out_of_fold_probabilities
from cifar100.audit.labels import label_issues
from cifar100.audit.neighbours import Match, outlier_fence, scan_test, scan_within
from cifar100.audit.page import audit_page
from cifar100.config import Config, load_preset, validate
from cifar100.data import load_data
from cifar100.data.cifar_sources import cifar_source
from cifar100.data.exclusions import KINDS, Finding, image_digests, write_findings
from cifar100.data.tensors import DataSplits
from cifar100.display_text import visible
from cifar100.errors import DataError
from cifar100.fileio import check_writable, write_json_atomic, write_text_atomic
from cifar100.paths import resolve_cache_dir
from cifar100.runtime.run_dir import RunDir, read_run_config

# Feature cosine at or above which two images count as copies. Measured on the real CIFAR-10
# JPEGs with the `cpu` preset's features (benchmarks/audit_measure.py, docs/results.md): at
# 0.85, 99.3% or more of the test images re-encoded, brightened, shifted by a pixel or blurred
# (97.7% of their mirror images) reach it, and 2.8% of the real test images have a training
# image above it, most of them (by eye) the same photograph, as Barz & Denzler (2020) counted
# 3.3%; at 0.90 the shifted and blurred copies fall to 94%, at 0.95 to 56-63%.
NEAR_THRESHOLD = 0.85
FOLDS = 5
DEFAULT_PRESET = "cpu"  # frozen EfficientNet-Lite0 features: a CPU audits 60,000 images


@dataclass
class AuditResult:
    """What an audit found and where it wrote it."""

    findings: list[Finding]
    summary: dict
    folder: Path

    csv = property(lambda self: self.folder / "audit.csv")
    html = property(lambda self: self.folder / "audit.html")
    json = property(lambda self: self.folder / "audit.json")


def audit(
    source: str | Path | None = None,
    *,
    dataset: str | None = None,
    preset: str = DEFAULT_PRESET,
    image_size: int | None = None,
    out: str | Path | None = None,
    folds: int = FOLDS,
    epochs: int | None = None,
    use_model: bool = False,
    near_threshold: float = NEAR_THRESHOLD,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> AuditResult:
    """Audit a dataset (an image folder or tarball, a CIFAR archive; none: CIFAR by
    `dataset`) or a run's data, into `out` (default: RUN/audit, or ./audit-<data name>).

    use_model: a run's own model gives the probabilities instead of cross-validation: it
    saw the training labels, so it misses wrong ones it learnt (a warning says so).
    """
    start = time.perf_counter()
    if not 0 < near_threshold <= 1:
        raise DataError(f"near threshold {near_threshold!r}: a cosine in (0, 1], e.g. 0.85")
    cfg, run = audit_config(source, dataset, preset, image_size)
    if use_model and run is None:
        raise DataError("--use-model takes the probabilities of a run's model: give a run")
    cache = resolve_cache_dir(cache_dir)
    splits = load_data(cfg.data, cache, seed=cfg.train.seed, progress=progress)
    folder = Path(out) if out else (run / "audit" if run else Path(f"audit-{splits.name}"))
    check_writable(folder / "audit.csv", "audit")  # before the minutes of work, not after
    train, test = splits.train, splits.test
    say = _say(progress)
    say(f"auditing {splits.name}: {len(train)} train, {len(test)} test images, "
        f"{len(splits.classes)} classes")  # fmt: skip
    train_x, test_x, described = _features(cfg, splits, cache, device, progress)
    if use_model:
        train_p, test_p = _model_probabilities(run, splits, device, progress)
        how = f"the run's own model (in sample: it understates wrong labels), {run}"
    else:
        train_p, test_p = out_of_fold_probabilities(
            train_x, train.labels, test_x, len(splits.classes), cfg, folds, epochs,
            cfg.train.seed, progress)  # fmt: skip
        how = f"{folds}-fold cross-validation of the {cfg.preset} preset's head on the features"
    digests = {"train": image_digests(train), "test": image_digests(test)}
    findings = _label_findings(splits, train_p, test_p, digests)
    fence, more = _neighbour_findings(splits, train_x, test_x, digests, near_threshold, progress)
    findings += more
    # audit.csv as a user reads it: kind by kind, the most suspect first
    order = list(KINDS)
    findings.sort(key=lambda f: (order.index(f.kind), -f.score, f.split, f.index))
    summary = {
        "data": splits.source or splits.name,
        "dataset": splits.name,
        "train_images": len(train),
        "test_images": len(test),
        "classes": len(splits.classes),
        "image_size": train.image_size,
        "probabilities": how,
        "features": described,
        "near_threshold": near_threshold,
        "outlier_distance_fence": fence,
        "counts": {k: sum(f.kind == k for f in findings) for k in KINDS},
        "seconds": time.perf_counter() - start,
    }
    images = {"train": train.images, "test": test.images}
    page = audit_page(findings, lambda split, i: images[split][i].numpy(), summary)
    result = AuditResult(findings, summary, folder)
    write_findings(result.csv, findings)
    write_text_atomic(result.html, page)
    write_json_atomic(result.json, {**summary, "settings": dataclasses.asdict(cfg.data)})
    return result


def audit_config(
    source: str | Path | None, dataset: str | None, preset: str, image_size: int | None
) -> tuple[Config, Path | None]:
    """The config whose data and feature model the audit uses, and the run (if a run)."""
    if source is not None and RunDir(source).is_run():
        if dataset or image_size:
            raise DataError(
                f"{source} is a run: it is audited on its own data; drop --dataset/--image-size"
            )
        return read_run_config(Path(source)), Path(source)
    cfg = load_preset(preset)
    cfg.data.dataset = dataset or guess_dataset(source)
    cfg.data.path = None if source is None else str(source)
    if cfg.data.dataset == "folder" and source is None:
        raise DataError("give the data to audit: an image folder or tarball, or a CIFAR archive")
    if image_size:
        cfg.data.image_size = image_size
    cfg.data.limit_train = cfg.data.limit_test = None
    return validate(cfg), None


def guess_dataset(source: str | Path | None) -> str:
    """cifar10/cifar100 for a path named as the published archive or its folder, else folder."""
    if source is None:
        return "cifar100"
    name = Path(source).name.lower()
    for dataset in ("cifar100", "cifar10"):
        s = cifar_source(dataset)
        if name in (s.filename.lower(), s.folder.lower()):
            return dataset
    return "folder"


def _features(cfg, splits: DataSplits, cache, device, progress):
    """Pooled features of both splits by the config's backbone with its pretrained weights
    (never a run's trained ones: they learnt the labels under audit), from the cache."""
    # Here, not above: the model and engine are needed once the data has loaded and checked.
    from cifar100.engine.features import FeatureCache, cached_features
    from cifar100.models.registry import build_model
    from cifar100.runtime.device import select_device

    m = dataclasses.replace(cfg.model, init=None)
    dev = select_device(device)
    model = build_model(m, num_classes=len(splits.classes), cache_dir=cache).to(dev)
    feats = FeatureCache(cache)
    t = cfg.train
    out = [
        cached_features(
            model, data, split, feats, m, dev, t.eval_batch_size, t.amp, progress=progress
        )  # fmt: skip
        for data, split in ((splits.train, "train"), (splits.test, "test"))
    ]
    size = splits.train.image_size * max(1, m.resize)
    return out[0], out[1], f"{m.backbone} ({m.weights}) at {size} px"


def _model_probabilities(run: Path, splits: DataSplits, device: str, progress: bool):
    from cifar100.runtime.trained_model import load  # with --use-model alone: a model loader

    print(
        f"warning: {run}'s model was trained on these labels: its probabilities are in "
        "sample, and it misses the wrong labels it learnt (the default cross-validation "
        "does not)",
        file=sys.stderr,
    )
    model = load(run, device=device)
    if list(model.classes) != list(splits.classes):
        raise DataError(f"{run}: its model's classes differ from its data's")
    t = model.info.temperature or 1.0
    return tuple(
        (model.logits(s.images, progress=progress).double() / t).softmax(1).numpy()
        for s in (splits.train, splits.test)
    )


def _label_findings(splits, train_p, test_p, digests) -> list[Finding]:
    out = []
    for split, data, p in (("train", splits.train, train_p), ("test", splits.test, test_p)):
        if not len(data):
            continue
        labels = data.labels.numpy()
        flagged, score = label_issues(labels, p)
        suggested = p.argmax(1)
        for i in np.flatnonzero(flagged):
            out.append(_finding("label", split, int(i), data, digests, float(score[i]),
                                splits.classes[suggested[i]]))  # fmt: skip
    return out


def _neighbour_findings(splits, train_x, test_x, digests, threshold, progress):
    """Copies within each split, leaks from test into train, outliers: (the outlier fence,
    the findings)."""
    inside = scan_within(train_x, digests["train"], threshold, progress)
    among_test = scan_within(test_x, digests["test"], threshold, progress, "test")
    tested, leaks = scan_test(test_x, digests["test"], train_x, digests["train"], threshold,
                              progress)  # fmt: skip
    return outlier_fence(inside.distance), [
        *_copy_findings(splits, inside.matches, "train", digests, leak=False),
        *_copy_findings(splits, among_test.matches, "test", digests, leak=False),
        *_copy_findings(splits, leaks, "train", digests, leak=True),
        *_outlier_findings(splits, inside.distance, tested.distance, digests),
    ]


def _copy_findings(splits, matches: list[Match], split, digests, leak: bool) -> list[Finding]:
    data = splits.train if split == "train" else splits.test
    other = "test" if leak else split
    partner_data = splits.test if leak else data
    kind = "leak" if leak else "duplicate"
    return [
        _finding(
            kind if m.exact else f"near_{kind}",
            split,
            m.index,
            data,
            digests,
            m.similarity,
            splits.classes[int(partner_data.labels[m.partner])],
            partner=f"{other}:{m.partner}",
        )  # fmt: skip
        for m in matches
    ]


def _outlier_findings(splits, train_d, test_d, digests) -> list[Finding]:
    """Images farther from their nearest training images than the fence, scored by the
    share of training images nearer to theirs (0.999: farther than 99.9% of them)."""
    fence, ranked = outlier_fence(train_d), np.sort(train_d)
    out = []
    for split, data, d in (("train", splits.train, train_d), ("test", splits.test, test_d)):
        for i in np.flatnonzero(d > fence):
            score = np.searchsorted(ranked, d[i]) / max(1, len(ranked))
            out.append(_finding("outlier", split, int(i), data, digests, float(score), ""))
    return out


def _finding(kind, split, i, data, digests, score, suggested, partner="") -> Finding:
    return Finding(
        kind=kind,
        split=split,
        index=i,
        path=data.paths[i] if data.paths else "",
        given=data.classes[int(data.labels[i])],
        suggested=suggested,
        score=score,
        partner=partner,
        sha256=digests[split][i],
    )


def _say(progress: bool):
    def say(message: str) -> None:
        if progress:
            print(visible(message), flush=True)

    return say


__all__ = ["NEAR_THRESHOLD", "AuditResult", "audit"]
