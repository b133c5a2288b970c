"""The `imagecorruptions` package (1.1.2, 2019) made importable and runnable on today's stack, as
the oracle of tests/test_corruptions.py.

Its code is left as it is; only what it imports is adapted, at its module's names:
- pkg_resources (gone from setuptools >= 81): a stand-in resource_filename, present only while
  the package is imported;
- np.float_ (gone in numpy 2): a numpy proxy for that module that adds it;
- skimage.filters.gaussian(multichannel=True) (gone in scikit-image 0.19): channel_axis=-1;
- skimage.util.random_noise draws from a fresh numpy Generator unless given one: it is handed a
  Generator on the global RandomState's own MT19937, so np.random.seed governs it as it governed
  the 2019 package (whose skimage drew from the global state).
"""

import importlib
import os
import sys
import types
import warnings

import numpy as np


def _resource_filename(package: str, path: str) -> str:
    return os.path.join(os.path.dirname(importlib.import_module(package).__file__), path)


class _NumpyWithFloat(types.ModuleType):
    float_ = np.float64

    def __getattr__(self, name: str):
        return getattr(np, name)


def load() -> types.ModuleType:
    """The imagecorruptions package, adapted; raises ImportError where it is not installed."""
    added = "pkg_resources" not in sys.modules
    if added:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            stub = types.ModuleType("pkg_resources")
            stub.resource_filename = _resource_filename
            sys.modules["pkg_resources"] = stub
    try:
        with warnings.catch_warnings():  # its scipy.ndimage.interpolation import is deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            import imagecorruptions
            import imagecorruptions.corruptions as ic
    finally:
        if added:
            sys.modules.pop("pkg_resources", None)
    import skimage
    import skimage.filters

    def gaussian(image, sigma=1.0, multichannel=None, **kw):
        if multichannel:
            kw["channel_axis"] = -1
        return skimage.filters.gaussian(image, sigma=sigma, **kw)

    def random_noise(image, **kw):
        shared = np.random.Generator(np.random.mtrand._rand._bit_generator)
        return skimage.util.random_noise(image, rng=shared, **kw)

    ic.np = _NumpyWithFloat("numpy")
    ic.gaussian = gaussian
    ic.sk = types.SimpleNamespace(
        util=types.SimpleNamespace(random_noise=random_noise), color=skimage.color
    )
    return imagecorruptions
