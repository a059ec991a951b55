"""Full-reference image quality of a derained image against its clean original: PSNR and SSIM.

Both take (B, 3, H, W) tensors in 0-1 (the derained one is clamped to 0-1 first, as a saved image
would be) and return one value per image; average them over a split for the usual per-image mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(images: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB (peak 1.0) of each image: (B,)."""
    mse = (images.float().clamp(0, 1) - clean.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coordinates = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    profile = torch.exp(-(coordinates**2) / (2 * sigma**2))
    profile /= profile.sum()
    return profile[:, None] * profile[None, :]


def ssim(images: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Structural similarity of each image: (B,).

    Wang et al. (2004): an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03 for a dynamic
    range of 1, computed per colour channel over the window positions that fit inside the image
    ("valid"), then averaged over positions and channels.
    """
    x, y = images.float().clamp(0, 1), clean.float()
    channels = x.shape[1]
    window = _gaussian_window().to(x.device).expand(channels, 1, -1, -1)

    def blur(tensor: torch.Tensor) -> torch.Tensor:
        return F.conv2d(tensor, window, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mean_x, mean_y = blur(x), blur(y)
    var_x = blur(x * x) - mean_x**2
    var_y = blur(y * y) - mean_y**2
    covariance = blur(x * y) - mean_x * mean_y
    similarity = ((2 * mean_x * mean_y + c1) * (2 * covariance + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    )
    return similarity.flatten(1).mean(1)
