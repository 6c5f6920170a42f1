"""The degradation the parser's robustness tests use: blur plus colour noise."""

import numpy as np
from scipy import ndimage


def degrade(image: np.ndarray, rng: np.random.Generator, sigma: float, noise: float) -> np.ndarray:
    """Gaussian blur of `sigma` px per channel plus i.i.d. N(0, noise) colour noise.

    Args:
        image: (H, W, 3) uint8 RGB.
        rng: numpy generator for the noise.
        sigma: blur standard deviation in pixels (0 for none).
        noise: noise standard deviation in 8-bit levels.

    Returns:
        (H, W, 3) uint8, rounded and clipped.
    """
    x = image.astype(np.float64)
    if sigma:
        x = ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0))
    x = x + rng.normal(0.0, noise, x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
