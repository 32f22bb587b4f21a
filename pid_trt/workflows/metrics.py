"""Full-reference image metrics and latent consistency for `reconstruct`.

Images are float [1, 3, H, W] in [0, 1]. PSNR uses data range 1 (the same value as upstream's torchmetrics PSNR on
0..255 with data_range 255); SSIM is the standard Gaussian-window SSIM (11×11, σ 1.5, K1 0.01, K2 0.03, valid
window positions only), averaged over channels and positions — the definition upstream's fused-ssim implements.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a.double(), b.double()).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    a, b = a.double(), b.double()
    window = min(window, a.shape[-2], a.shape[-1])  # images smaller than the window use a smaller one
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=a.shape[1])

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean().item()


def latent_consistency(latent: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """MSE and cosine similarity (over all elements) between a re-encoded latent and the input's latent."""
    x, ref = latent.double().flatten(), reference.double().flatten()
    return {"latent_mse": F.mse_loss(x, ref).item(), "latent_cosine": F.cosine_similarity(x, ref, dim=0).item()}
