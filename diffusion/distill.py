"""Progressive distillation (Salimans & Ho, ICLR 2022, Algorithm 2): a student learns to take in one
deterministic DDIM step what its teacher takes in two, so each round halves the number of sampling steps.

The teacher is a trained model at `teacher_steps` DDIM steps (or an earlier student, which brings its own step
count); the student starts from the teacher's weights and samples on the grid `spaced_timesteps(T, K)` with
K = teacher_steps / 2. These grids nest (`spaced_timesteps(T, 2K)[::2] == spaced_timesteps(T, K)`), so the
teacher's two steps from a student timestep land exactly on the next student timestep.

The student keeps the teacher's parameterisation (x0 for the released CT model: the x-prediction is one of the
parameterisations Salimans & Ho found stable for distillation, and changing it would mean retraining the teacher).
"""
from __future__ import annotations

import torch
from torch import nn

from diffusion.checkpoint import load_slim
from diffusion.errors import UserError
from samplers.known import alpha_bar, ddim_step, replace_known
from samplers.schedules import spaced_timesteps


def plan_round(config: dict, teacher_config: dict) -> dict:
    """The student's resolved config: the teacher's network and schedule, half its steps, the distilled sampler.
    `distill.mode: ensemble`: one step, trained towards the teacher's default ensemble (see EnsembleDistillationLoss)."""
    dc = config["distill"]
    if dc["mode"] not in ("progressive", "ensemble"):
        raise UserError(f"distill.mode {dc['mode']!r}: progressive or ensemble")
    if teacher_config["diffusion"]["objective"] != "diffusion":
        raise UserError(f"distill.teacher {dc['teacher']}: a regressor cannot be distilled")
    sample = teacher_config["sample"]
    if dc["mode"] == "ensemble":
        distill = {"teacher_steps": int(sample["steps"]), "student_steps": 1,
                   "teacher_ensemble": int(sample["ensemble"]), "teacher_flip": bool(sample["flip"])}
        student_sample = {"steps": 1, "ensemble": 1, "flip": False}
    else:
        teacher_steps = int(teacher_config["distill"]["student_steps"] or dc["teacher_steps"])
        if teacher_steps < 2 or teacher_steps % 2:
            raise UserError(f"distill.teacher {dc['teacher']}: the teacher samples in {teacher_steps} steps; "
                            f"distillation needs an even number >= 2")
        distill = {"teacher_steps": teacher_steps, "student_steps": teacher_steps // 2}
        student_sample = {"steps": teacher_steps // 2}
    return {**config, "model": teacher_config["model"], "diffusion": dict(teacher_config["diffusion"]),
            "distill": {**dc, **distill}, "sample": {**config["sample"], "sampler": "distilled", **student_sample}}


def load_teacher(config: dict, build_denoiser):
    """(teacher denoiser frozen in eval mode, teacher config)."""
    state, teacher_config, _ = load_slim(config["distill"]["teacher"], expected_task=config["task"])
    teacher = build_denoiser(teacher_config)
    teacher.net.load_state_dict(state)
    teacher.eval().requires_grad_(False)
    return teacher, teacher_config


class DistillationLoss(nn.Module):
    """forward(target, cond, class_labels, weight) -> per-sample loss, like the training loss it replaces.

    For a random student step t -> t'' the teacher takes two DDIM steps t -> t' -> t'' from x_t (with the known
    pixels replaced by the noised truth at t', as the samplers do); the student's target is the x0 that makes a
    single DDIM step from x_t land on the teacher's x_t'' (Salimans & Ho, Algorithm 2)."""

    def __init__(self, student, teacher, student_steps: int, known_fn=None):
        super().__init__()
        self.denoiser = student
        self.teacher = teacher
        self.known_fn = known_fn  # (target, cond) -> {"x0", "mask"} or None
        self.student_steps = student_steps
        grid = spaced_timesteps(student.num_train_timesteps, 2 * student_steps) + [-1]
        self.register_buffer("grid", torch.tensor(grid), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_target(self, x_t, t, t_mid, t_next, cond, class_labels, known) -> torch.Tensor:
        """The teacher's two DDIM steps t -> t_mid -> t_next (the samplers' own step and known-pixel replacement,
        per-sample timesteps; t_next = -1: the clean image), turned into the x0 target of one student step."""
        x0, eps = self.teacher(x_t, t, cond, class_labels)
        x_mid = replace_known(self.teacher, ddim_step(self.teacher, x0, eps, t_mid), t_mid, known)
        x0, eps = self.teacher(x_mid, t_mid, cond, class_labels)
        x_next = ddim_step(self.teacher, x0, eps, t_next)
        abar_t, abar_n = alpha_bar(self.teacher, t), alpha_bar(self.teacher, t_next)
        a_t, s_t, a_n, s_n = abar_t.sqrt(), (1 - abar_t).sqrt(), abar_n.sqrt(), (1 - abar_n).sqrt()
        ratio = s_n / s_t
        return (x_next - ratio * x_t) / (a_n - ratio * a_t)

    def forward(self, target, cond, class_labels, weight):
        n = target.shape[0]
        step = torch.randint(0, self.student_steps, (n,), device=target.device)
        grid = self.grid.to(target.device)
        t, t_mid, t_next = grid[2 * step], grid[2 * step + 1], grid[2 * step + 2]
        x_t = self.denoiser.add_noise(target, torch.randn_like(target), t)
        known = self.known_fn(target, cond) if self.known_fn is not None else None
        x0_target = self.teacher_target(x_t, t, t_mid, t_next, cond, class_labels, known).clamp(-1, 1)
        out = self.denoiser.raw(x_t, t, cond, class_labels)
        return self.denoiser.weighted_loss(out, self.denoiser.prediction_target(x_t, t, x0_target), weight)


class EnsembleDistillationLoss(nn.Module):
    """Ensemble distillation: a one-evaluation student learns what the teacher's default setting gives, the
    per-pixel median of its `ensemble` one-step DDIM members (odd members see the mirrored input when `flip`),
    computed on the fly for every training crop. The student samples as DDIM-1 does (noise at t = T-1, known pixels
    replaced), so `distilled:1` runs it at the cost of one member; its target is the MAE-optimal ensemble answer
    instead of one sample. forward(target, cond, class_labels, weight) -> per-sample loss."""

    def __init__(self, student, teacher, ensemble: int, flip: bool, known_fn=None):
        super().__init__()
        self.denoiser = student
        self.teacher = teacher
        self.ensemble, self.flip = ensemble, flip
        self.known_fn = known_fn  # (target, cond) -> {"x0", "mask"} or None

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def start(self, shape, t: torch.Tensor, known: dict | None, like: torch.Tensor) -> torch.Tensor:
        """x at t = T-1: noise, with the known pixels replaced by their noised truth (the samplers' replacement)."""
        return replace_known(self.denoiser, torch.randn(shape, device=like.device, dtype=like.dtype), t, known)

    @torch.no_grad()
    def ensemble_target(self, cond, class_labels, known) -> torch.Tensor:
        """The teacher's ensemble median in x0 space, (N, C, H, W)."""
        n, members = cond.shape[0], []
        t = torch.full((n,), self.teacher.num_train_timesteps - 1, device=cond.device, dtype=torch.long)
        for e in range(self.ensemble):
            mirrored = self.flip and e % 2 == 1
            c = cond.flip(-1) if mirrored else cond
            k = None if known is None else {key: v.flip(-1) if mirrored else v for key, v in known.items()}
            x = self.start((n, self.denoiser.net.config.out_channels, *cond.shape[-2:]), t, k, cond)
            x0, _ = self.teacher(x, t, c, class_labels)
            members.append(x0.flip(-1) if mirrored else x0)
        stacked = torch.stack(members)
        return stacked.quantile(0.5, dim=0) if self.ensemble > 1 else stacked[0]

    def forward(self, target, cond, class_labels, weight):
        known = self.known_fn(target, cond) if self.known_fn is not None else None
        x0_target = self.ensemble_target(cond, class_labels, known)
        t = torch.full((target.shape[0],), self.denoiser.num_train_timesteps - 1, device=target.device,
                       dtype=torch.long)
        x_t = self.start(target.shape, t, known, target)
        out = self.denoiser.raw(x_t, t, cond, class_labels)
        return self.denoiser.weighted_loss(out, self.denoiser.prediction_target(x_t, t, x0_target), weight)
