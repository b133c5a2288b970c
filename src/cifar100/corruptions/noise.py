"""The noise family: gaussian_noise, shot_noise, impulse_noise.

Each image draws from its own RandomState, in the order and shapes imagecorruptions draws from
numpy's global generator, so a seeded run of that package gives the same noise.
"""

from collections.abc import Sequence

import numpy as np

from .registry import register


@register("noise")
def gaussian_noise(
    x: np.ndarray, scale: float, rngs: Sequence[np.random.RandomState]
) -> np.ndarray:
    """Add N(0, scale) noise to the image in 0..1."""
    noise = np.stack([rng.normal(size=x.shape[1:], scale=scale) for rng in rngs])
    return np.clip(x / 255.0 + noise, 0, 1) * 255


@register("noise")
def shot_noise(x: np.ndarray, photons: float, rngs: Sequence[np.random.RandomState]) -> np.ndarray:
    """Poisson noise: each value in 0..1 becomes Poisson(value * photons) / photons."""
    lam = x / 255.0 * photons
    counts = np.stack([rng.poisson(lam[i]) for i, rng in enumerate(rngs)])
    return np.clip(counts / float(photons), 0, 1) * 255


@register("noise")
def impulse_noise(
    x: np.ndarray, amount: float, rngs: Sequence[np.random.RandomState]
) -> np.ndarray:
    """Salt and pepper: a share `amount` of the values becomes 0 or 1, half each.

    As skimage.util.random_noise(mode="s&p") draws it today: one uniform per value for "flipped"
    (u <= amount), then one per value for "salt" (u <= 0.5). skimage of 2018, which made the
    published datasets, drew the same Bernoulli variables with np.random.choice instead.
    """
    out = x / 255.0
    for i, rng in enumerate(rngs):
        flipped = rng.random_sample(x.shape[1:]) <= amount
        salted = rng.random_sample(x.shape[1:]) <= 0.5
        out[i][flipped & salted] = 1.0
        out[i][flipped & ~salted] = 0.0
    return np.clip(out, 0, 1) * 255
