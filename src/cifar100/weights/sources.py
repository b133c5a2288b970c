"""Where pretrained weights come from: published files (URL, digest) fetched into the cache.

Each backbone publishes its own files (--weights name -> WeightFile), beside its model:

path = resolve_weights("resnet50v2", PUBLISHED, "imagenet")   # downloaded once, md5-checked
path = resolve_weights("resnet50v2", PUBLISHED, "~/weights/resnet50v2_notop.h5")   # a local file
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cifar100.data.download import fetch_cached, size_limit
from cifar100.errors import ModelError
from cifar100.fileio import file_problem
from cifar100.paths import resolve_cache_dir

# A base URL that replaces every file's own location: a local mirror, or a test server.
MIRROR_ENV = "CIFAR100_WEIGHTS_MIRROR"
CACHE_SUBDIR = "weights"


@dataclass(frozen=True)
class WeightFile:
    """A published weights file: its name, the base URL it is served from, its md5 and size."""

    filename: str
    base_url: str
    md5: str
    size: int  # bytes, as the server's Content-Length gives it (downloads are bounded by it)

    @property
    def url(self) -> str:
        """Where it is fetched from: $CIFAR100_WEIGHTS_MIRROR/filename if set, else its origin."""
        mirror = os.environ.get(MIRROR_ENV)
        return f"{(mirror or self.base_url).rstrip('/')}/{self.filename}"

    @property
    def origin(self) -> str:
        return f"{self.base_url.rstrip('/')}/{self.filename}"


def resolve_weights(
    backbone_name: str,
    files: Mapping[str, WeightFile],
    source: str,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """A local weights file for `source`: a name `files` publishes (e.g. "imagenet"), or a
    file path. Published files are downloaded once into <cache>/weights/, md5-checked.
    """
    published = files.get(source.lower())
    if published is not None:
        hint = (
            f"offline? download {published.origin} (md5 {published.md5}) on another machine "
            f"and pass --weights /path/to/{published.filename}, or train from scratch with "
            "--weights none"
        )
        cache = resolve_cache_dir(cache_dir) / CACHE_SUBDIR
        return fetch_cached(
            published.url,
            cache,
            published.filename,
            md5=published.md5,
            progress=progress,
            hint=hint,
            max_bytes=size_limit(published.size),
        )
    if source.lower() == "imagenet":  # a name, not a file: none published for this backbone
        raise ModelError(
            f"no {source!r} weights are published for {backbone_name}; pass a weights file or "
            "--weights none"
        )
    path = Path(source).expanduser()
    problem = file_problem(path)  # before anything opens it: a FIFO would block
    if problem:
        raise ModelError(f"{path}: {problem}; give a Keras .h5 weights file (or --weights none)")
    if not path.is_file():
        raise ModelError(
            f"weights file {path} not found; --weights takes 'imagenet', a Keras .h5 file, or "
            "'none' (--weights none trains from scratch)"
        )
    return path
