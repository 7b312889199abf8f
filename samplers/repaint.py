"""RePaint-style resampling (Lugmayr et al., CVPR 2022, Algorithm 1) for a conditional model.

Ancestral steps over `steps` spaced timesteps; at each step the known region is replaced by the forward-noised
truth; the jump schedule re-noises `jump_length` steps back `jump_n_sample - 1` times to harmonise.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from samplers.ddim import ddpm_step
from samplers.known import alpha_bar, randn_like, replace_known, timestep_batch
from samplers.schedules import repaint_jump_schedule


@torch.no_grad()
def sample_repaint(model, x, timesteps, extra_args=None, callback=None, disable=None, known=None, generator=None,
                   jump_length: int = 10, jump_n_sample: int = 10):
    extra_args = extra_args or {}
    timesteps = list(timesteps)
    k = len(timesteps)
    positions = repaint_jump_schedule(k, jump_length, jump_n_sample)

    def t_at(p: int) -> int:  # position p -> timestep; p = k-1 is the largest, -1 the clean image
        return timesteps[k - 1 - p] if p >= 0 else -1

    pairs = list(zip(positions[:-1], positions[1:]))
    for i, (p, p_next) in enumerate(tqdm(pairs, disable=disable if disable is not None else True, leave=False)):
        t, t_next = t_at(p), t_at(p_next)
        if p_next < p:  # one ancestral denoising step
            x = replace_known(model, x, t, known, generator)
            x0, _ = model(x, timestep_batch(t, x), **extra_args)
            x = ddpm_step(model, x, x0, t, t_next, generator)
            if callback is not None:
                callback({"i": i, "t": t, "x": x, "denoised": x0})
        else:  # jump back: forward-noise from t to t_next > t
            ratio = alpha_bar(model, t_next) / alpha_bar(model, t)
            x = ratio.sqrt() * x + (1 - ratio).sqrt() * randn_like(x, generator)
    return x
