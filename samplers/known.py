"""Known-pixel replacement (RePaint, Lugmayr et al. 2022, eq. 8) and the noise and timestep helpers every sampler
shares. Everything a sampler creates lives on the device of the sample `x` (k-diffusion's rule)."""
from __future__ import annotations

import torch


def randn_like(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Standard normal noise shaped like x, on x's device. `generator`: None, one `torch.Generator` (on x's
    device) for the batch, or a list with one generator per sample, so that a sample's noise does not depend on
    the batch it is drawn in (validation in one batch and inference one slice at a time compute the same)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]}")
        return torch.stack([torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype)
                            for g in generator])
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def timestep_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    """The timestep `t` for every sample of x, as a 1-D long tensor on x's device."""
    return torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)


def alpha_bar(model, t) -> torch.Tensor:
    """The model's cumulative alpha at training timestep t (t = -1: the clean image, 1), on the model's device.
    `t` is an int, or a (N,) tensor of per-sample timesteps (then the result is shaped (N, 1, 1, 1))."""
    if isinstance(t, torch.Tensor):
        abar = model.alphas_cumprod[t.clamp_min(0).long()]
        return torch.where(t < 0, torch.ones_like(abar), abar).view(-1, 1, 1, 1)
    return model.alphas_cumprod[t] if t >= 0 else model.alphas_cumprod.new_tensor(1.0)


def ddim_step(model, x0: torch.Tensor, eps: torch.Tensor, t_next) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) to timestep `t_next` from the model's estimates (x0, eps) at the current one:
    x_next = sqrt(abar_next) x0 + sqrt(1 - abar_next) eps; t_next = -1 gives x0. `t_next`: an int or a (N,) tensor."""
    if not isinstance(t_next, torch.Tensor) and t_next < 0:
        return x0
    a_next = alpha_bar(model, t_next)
    return a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps


def replace_known(model, x: torch.Tensor, t, known: dict | None, generator=None) -> torch.Tensor:
    """known = {"x0": clean image (N, C, H, W), "mask": 1 where known}: those pixels of x become the truth noised
    to timestep t (an int or a (N,) tensor). No-op when known is None."""
    if known is None:
        return x
    a = alpha_bar(model, t)
    noised = a.sqrt() * known["x0"] + (1 - a).sqrt() * randn_like(x, generator)
    return torch.where(known["mask"] > 0, noised, x)
