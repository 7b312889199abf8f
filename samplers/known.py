"""Known-pixel replacement (RePaint, Lugmayr et al. 2022, eq. 8): the known region of x_t is the forward-noised truth."""
from __future__ import annotations

import torch


def replace_known(model, x: torch.Tensor, t: int, known: dict | None, generator=None) -> torch.Tensor:
    """known = {"x0": clean image (N, C, H, W), "mask": 1 where known}. No-op when known is None."""
    if known is None:
        return x
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    a = model.alphas_cumprod[t]
    noised = a.sqrt() * known["x0"] + (1 - a).sqrt() * noise
    return torch.where(known["mask"] > 0, noised, x)
