"""Samplers: one function per sampler with one signature

    sampler(model, x, timesteps, extra_args=None, callback=None, disable=None, known=None, generator=None, **knobs)

where `model(x_t, t, **extra_args) -> (x0_hat, eps_hat)` is a `diffusion.denoiser.Denoiser`, `x` the starting
noise and `timesteps` the descending training timesteps. `SAMPLERS[name]` is the registry; `nfe` counts
network evaluations per sample for a spec.
"""
from __future__ import annotations

from dataclasses import dataclass

from samplers.ddim import sample_ddim, sample_ddpm, sample_distilled, sample_regressor
from samplers.repaint import sample_repaint
from samplers.schedules import repaint_jump_schedule, spaced_timesteps

SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "repaint": sample_repaint,
    "distilled": sample_distilled,   # a student of `diffusion.distill`; steps = the student's step count
    "regressor": sample_regressor,   # the regressor baseline: always one evaluation
}

REPAINT_JUMP_LENGTH = 10   # RePaint's jump_length (capped at half the steps: `repaint_jump_length`)
REPAINT_JUMPS = 10         # RePaint's jump_n_sample when a spec names none (`repaint:50` = `repaint:50x10`)


@dataclass(frozen=True)
class SamplerSpec:
    """`name:steps`, RePaint as `repaint:STEPSxJUMPS` (jump_n_sample)."""

    name: str
    steps: int
    jumps: int = 1

    def __str__(self) -> str:
        return f"{self.name}:{self.steps}" + (f"x{self.jumps}" if self.name == "repaint" else "")

    def knobs(self) -> dict:
        if self.name == "repaint":
            return {"jump_length": repaint_jump_length(self.steps), "jump_n_sample": self.jumps}
        return {}

    @property
    def nfe(self) -> int:
        if self.name == "repaint":
            positions = repaint_jump_schedule(self.steps, repaint_jump_length(self.steps), self.jumps)
            return sum(1 for a, b in zip(positions[:-1], positions[1:]) if b < a)
        return self.steps


def repaint_jump_length(steps: int) -> int:
    return min(REPAINT_JUMP_LENGTH, max(1, steps // 2))


def parse_spec(text: str) -> SamplerSpec:
    """Parse `name:steps` (e.g. `ddim:10`, `repaint:50x10`); raise ValueError with a clear message."""
    name, sep, rest = text.strip().partition(":")
    if not sep or not rest:
        raise ValueError(f"sampler spec {text!r}: expected NAME:STEPS (e.g. ddim:10 or repaint:50x10)")
    if name not in SAMPLERS:
        raise ValueError(f"sampler spec {text!r}: unknown sampler {name!r}; known: {', '.join(sorted(SAMPLERS))}")
    steps_text, _, jumps_text = rest.partition("x")
    if name != "repaint" and jumps_text:
        raise ValueError(f"sampler spec {text!r}: only repaint takes STEPSxJUMPS")
    try:
        steps = int(steps_text)
        jumps = int(jumps_text) if jumps_text else (REPAINT_JUMPS if name == "repaint" else 1)
    except ValueError:
        raise ValueError(f"sampler spec {text!r}: steps and jumps must be integers") from None
    if steps < 1 or jumps < 1:
        raise ValueError(f"sampler spec {text!r}: steps and jumps must be >= 1")
    if name == "regressor" and steps != 1:
        raise ValueError(f"sampler spec {text!r}: the regressor takes exactly one step (regressor:1)")
    return SamplerSpec(name, steps, jumps)


__all__ = ["REPAINT_JUMPS", "SAMPLERS", "SamplerSpec", "parse_spec", "repaint_jump_schedule", "spaced_timesteps"]
