"""The denoiser wrapper: noise parameterisation, the DDPM noise schedule and the per-sample loss.

The network sees `cat([x_t, condition])` and a class label; the wrapper turns its output into an estimate of
the clean target x0 whatever it was trained to predict (epsilon, v or x0 itself).
"""
from __future__ import annotations

from typing import get_args

import torch
from diffusers import DDPMScheduler
from torch import nn

from diffusion.config import Loss, Objective, PredictionType

PREDICTION_TYPES, OBJECTIVES, LOSSES = get_args(PredictionType), get_args(Objective), get_args(Loss)


def soft_dice_loss(probability: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample 1 - soft Dice over the pixels where `mask` > 0, smoothed by 1 so that an empty target (a healthy
    crop) asks for an empty prediction instead of dividing by zero."""
    p, y, m = probability.flatten(1), target.flatten(1), (mask > 0).to(probability.dtype).expand_as(probability).flatten(1)
    return 1 - (2 * (p * y * m).sum(1) + 1) / ((p * m).sum(1) + (y * m).sum(1) + 1)


class Denoiser(nn.Module):
    def __init__(self, net: nn.Module, *, prediction_type: str = "sample", num_train_timesteps: int = 1000,
                 beta_schedule: str = "squaredcos_cap_v2", loss: str = "l1", timestep_power: float = 1.0,
                 null_class: int | None = None, class_dropout: float = 0.0, objective: str = "diffusion"):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if loss == "bce_dice" and prediction_type != "sample":
            raise ValueError("loss 'bce_dice' predicts the clean target's logits: it needs prediction_type 'sample'")
        self.net = net
        self.prediction_type = prediction_type
        self.num_train_timesteps = num_train_timesteps
        self.loss_type = loss
        self.timestep_power = timestep_power      # t = T * u**power: < 1 spends more training on high noise
        self.null_class = null_class              # class label meaning "no vertebra given"
        self.class_dropout = class_dropout        # probability of replacing the label by null_class in training
        # "regress": the same network trained as a deterministic regressor (input zeros at t = T-1, target x0),
        # the baseline a diffusion model has to beat at equal compute
        self.objective = objective
        schedule = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.float().clone(), persistent=False)

    # --- schedule -------------------------------------------------------------------------------------------
    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.alphas_cumprod[t.long()].view(-1, 1, 1, 1)
        return abar.sqrt(), (1 - abar).sqrt()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.alpha_sigma(t)
        return a * x0 + s * noise

    # --- prediction -----------------------------------------------------------------------------------------
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x0_hat, eps_hat) in float32, x0_hat clamped to [-1, 1]. `t`: (N,) or a scalar timestep."""
        t = torch.as_tensor(t, device=x_t.device)
        t = t.expand(x_t.shape[0]) if t.dim() == 0 else t
        out = self.net(torch.cat([x_t, cond], 1).to(self._dtype()), t, class_labels=class_labels).sample.float()
        a, s = self.alpha_sigma(t)
        if self.loss_type == "bce_dice":  # the network gives the logit of the target's probability (x0 + 1) / 2
            x0 = 2 * torch.sigmoid(out) - 1
        elif self.prediction_type == "epsilon":
            x0 = (x_t - s * out) / a
        elif self.prediction_type == "v_prediction":
            x0 = a * x_t - s * out
        else:
            x0 = out
        x0 = x0.clamp(-1, 1)
        eps = (x_t - a * x0) / s
        return x0, eps

    def _dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    # --- training -------------------------------------------------------------------------------------------
    def sample_timesteps(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(n, device=device, generator=generator)
        return (self.num_train_timesteps * u.pow(self.timestep_power)).long().clamp(0, self.num_train_timesteps - 1)

    def loss(self, x0: torch.Tensor, cond: torch.Tensor, class_labels: torch.Tensor | None,
             weight: torch.Tensor, t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample loss, averaged over the pixels where `weight` > 0 (pixels with weight 0 are ignored)."""
        n = x0.shape[0]
        if self.objective == "regress":
            t = torch.full((n,), self.num_train_timesteps - 1, device=x0.device, dtype=torch.long)
            out = self.raw(torch.zeros_like(x0), t, cond, class_labels)
            return self.weighted_loss(out, x0, weight)
        t = self.sample_timesteps(n, x0.device) if t is None else t
        noise = torch.randn_like(x0) if noise is None else noise
        if class_labels is not None and self.training and self.class_dropout > 0:
            drop = torch.rand(n, device=x0.device) < self.class_dropout
            class_labels = torch.where(drop, torch.full_like(class_labels, self.null_class), class_labels)
        x_t = self.add_noise(x0, noise, t)
        out = self.raw(x_t, t, cond, class_labels)
        return self.weighted_loss(out, self.prediction_target(x_t, t, x0), weight)

    def raw(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
            class_labels: torch.Tensor | None) -> torch.Tensor:
        """The network's output in its own parameterisation (float32), with gradients."""
        return self.net(torch.cat([x_t, cond], 1), t, class_labels=class_labels).sample.float()

    def prediction_target(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """What the network should output at (x_t, t) if the clean target is x0, in its parameterisation."""
        if self.prediction_type == "sample":
            return x0
        a, s = self.alpha_sigma(t)
        eps = (x_t - a * x0) / s
        return eps if self.prediction_type == "epsilon" else a * eps - s * x0

    def weighted_loss(self, out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Per-sample loss of the network's output against its target (both in the network's parameterisation).
        `bce_dice` (segmentation, the strong public entries' loss): the output is a logit, the target x0 in [-1, 1]
        is read as the probability (x0 + 1) / 2; weighted BCE plus a soft Dice over the pixels with weight > 0."""
        if self.loss_type == "bce_dice":
            y = (target + 1) / 2
            bce = torch.nn.functional.binary_cross_entropy_with_logits(out, y, reduction="none")
            w = weight.to(bce.dtype).expand_as(bce)
            bce = (bce * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1.0)
            return bce + soft_dice_loss(torch.sigmoid(out), y, weight)
        diff = out - target
        per_pixel = diff.abs() if self.loss_type == "l1" else diff.square()
        weight = weight.to(per_pixel.dtype).expand_as(per_pixel)
        return (per_pixel * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1.0)
