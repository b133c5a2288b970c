"""The CIFAR catalogue: where CIFAR-10 and CIFAR-100 are published (canonical site or a mirror)
and how each python archive is laid out."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cifar100.errors import DataError

CANONICAL_BASE_URL = "https://www.cs.toronto.edu/~kriz"
MIRROR_ENV = "CIFAR100_MIRROR"


@dataclass(frozen=True)
class CifarSource:
    """Where one CIFAR variant is published and how its archive is laid out."""

    name: str
    title: str
    filename: str
    md5: str
    folder: str
    train_members: tuple[str, ...]
    test_member: str
    meta_member: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    has_coarse: bool  # CIFAR-100's 20 superclasses

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train_members, self.test_member, self.meta_member)


# fmt: off
SOURCES: dict[str, CifarSource] = {
    "cifar100": CifarSource(
        name="cifar100", title="CIFAR-100", filename="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85", folder="cifar-100-python",
        train_members=("train",), test_member="test", meta_member="meta",
        label_key=b"fine_labels", names_key=b"fine_label_names", num_classes=100,
        has_coarse=True,
    ),
    "cifar10": CifarSource(
        name="cifar10", title="CIFAR-10", filename="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a", folder="cifar-10-batches-py",
        train_members=tuple(f"data_batch_{i}" for i in range(1, 6)), test_member="test_batch",
        meta_member="batches.meta", label_key=b"labels", names_key=b"label_names",
        num_classes=10, has_coarse=False,
    ),
}
# fmt: on
COARSE_KEY, COARSE_NAMES_KEY, NUM_COARSE = b"coarse_labels", b"coarse_label_names", 20


def source_url(name: str, base_url: str | None = None) -> str:
    """The archive's URL: `base_url`, else $CIFAR100_MIRROR, else the canonical site."""
    base = base_url or os.environ.get(MIRROR_ENV) or CANONICAL_BASE_URL
    return f"{base.rstrip('/')}/{cifar_source(name).filename}"


def cifar_source(name: str) -> CifarSource:
    """The catalogue entry for "cifar10" or "cifar100"."""
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(
            f"unknown CIFAR dataset {name!r}; expected one of {sorted(SOURCES)}"
        ) from None
