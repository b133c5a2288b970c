"""The CIFAR catalogue: where CIFAR-10 and CIFAR-100 are published (canonical site or a mirror)
and how each python archive is laid out."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cifar100.errors import DataError

CANONICAL_BASE_URL = "https://www.cs.toronto.edu/~kriz"
MIRROR_ENV = "CIFAR100_MIRROR"

IMAGE_BYTES = 3 * 32 * 32
# The most bytes one image takes in a member: its pixels, twice over since Python 3 pickles
# bytes at protocol 2 as latin-1 text in UTF-8 (a re-packed archive); plus its labels and
# filename (~60 bytes in the published files) and their pickle framing.
MEMBER_BYTES_PER_IMAGE = 2 * IMAGE_BYTES + 256
MEMBER_ALLOWANCE = 64 << 10  # a member's own keys and batch label; all of a meta file (~2 KB)


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
    size: int  # bytes of the published archive
    train_member_images: int  # images in each train member
    test_member_images: int

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train_members, self.test_member, self.meta_member)

    def member_limit(self, member: str) -> int:
        """The most bytes `member` (a name in `members`) can take in this format."""
        images = (
            self.train_member_images
            if member in self.train_members
            else self.test_member_images
            if member == self.test_member
            else 0
        )
        return images * MEMBER_BYTES_PER_IMAGE + MEMBER_ALLOWANCE


# Sizes and image counts as published (https://www.cs.toronto.edu/~kriz/cifar.html): CIFAR-100
# has one train member of 50,000 images and a test member of 10,000; CIFAR-10 five train batches
# of 10,000 and a test batch of 10,000. The archive sizes are the servers' Content-Length.
# fmt: off
SOURCES: dict[str, CifarSource] = {
    "cifar100": CifarSource(
        name="cifar100", title="CIFAR-100", filename="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85", folder="cifar-100-python",
        train_members=("train",), test_member="test", meta_member="meta",
        label_key=b"fine_labels", names_key=b"fine_label_names", num_classes=100,
        has_coarse=True, size=169_001_437, train_member_images=50_000, test_member_images=10_000,
    ),
    "cifar10": CifarSource(
        name="cifar10", title="CIFAR-10", filename="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a", folder="cifar-10-batches-py",
        train_members=tuple(f"data_batch_{i}" for i in range(1, 6)), test_member="test_batch",
        meta_member="batches.meta", label_key=b"labels", names_key=b"label_names",
        num_classes=10, has_coarse=False, size=170_498_071, train_member_images=10_000,
        test_member_images=10_000,
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
