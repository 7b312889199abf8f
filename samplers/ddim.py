"""Deterministic DDIM (Song et al., ICLR 2021, eq. 12 with eta = 0), and ancestral DDPM over any subset of the
training timesteps (Ho et al. 2020, Algorithm 2, with the posterior of the spaced chain)."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from samplers.known import alpha_bar, ddim_step, randn_like, replace_known, timestep_batch


@torch.no_grad()
def sample_ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, known=None, generator=None):
    """x: noise (N, C, H, W); timesteps: descending training timesteps. Returns x0."""
    extra_args = extra_args or {}
    timesteps = list(timesteps)
    for i, t in enumerate(tqdm(timesteps, disable=disable if disable is not None else True, leave=False)):
        x = replace_known(model, x, t, known, generator)
        x0, eps = model(x, timestep_batch(t, x), **extra_args)
        x = ddim_step(model, x0, eps, timesteps[i + 1] if i + 1 < len(timesteps) else -1)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x0})
    return x


def ddpm_step(model, x, x0, t: int, t_prev: int, generator=None):
    """One ancestral step from timestep t to t_prev < t (t_prev = -1: return x0)."""
    if t_prev < 0:
        return x0
    a_t, a_prev = alpha_bar(model, t), alpha_bar(model, t_prev)
    beta = 1 - a_t / a_prev
    mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)) * x
    var = beta * (1 - a_prev) / (1 - a_t)
    return mean + var.sqrt() * randn_like(x, generator)


@torch.no_grad()
def sample_ddpm(model, x, timesteps, extra_args=None, callback=None, disable=None, known=None, generator=None):
    """Ancestral sampling: x0 from the model, then a draw from q(x_{t_prev} | x_t, x0)."""
    extra_args = extra_args or {}
    timesteps = list(timesteps)
    for i, t in enumerate(tqdm(timesteps, disable=disable if disable is not None else True, leave=False)):
        x = replace_known(model, x, t, known, generator)
        x0, _ = model(x, timestep_batch(t, x), **extra_args)
        x = ddpm_step(model, x, x0, t, timesteps[i + 1] if i + 1 < len(timesteps) else -1, generator)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x0})
    return x


@torch.no_grad()
def sample_distilled(model, x, timesteps, extra_args=None, callback=None, disable=None, known=None, generator=None):
    """A progressively distilled student (`diffusion.distill`): deterministic DDIM on the student's own grid,
    with the known pixels replaced by the noised truth before every step. `timesteps` must be the grid the
    student was distilled for (`Predictor` checks the step count against the checkpoint)."""
    return sample_ddim(model, x, timesteps, extra_args, callback, disable, known, generator)


@torch.no_grad()
def sample_regressor(model, x, timesteps, extra_args=None, callback=None, disable=None, known=None, generator=None):
    """The deterministic regressor baseline (`diffusion.objective: regress`): one network evaluation on a zero
    input at the last timestep; the starting noise and `timesteps` are ignored."""
    extra_args = extra_args or {}
    t = model.num_train_timesteps - 1
    x0, _ = model(torch.zeros_like(x), timestep_batch(t, x), **extra_args)
    if callback is not None:
        callback({"i": 0, "t": t, "x": x0, "denoised": x0})
    return x0
