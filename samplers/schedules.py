"""Timestep schedules: pure functions of integers, tested for their invariants."""
from __future__ import annotations


def spaced_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """`steps` descending training timesteps, "trailing" spacing, always starting at T-1.

    steps=4, T=1000 -> [999, 749, 499, 249].
    """
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in 1..{num_train_timesteps}, got {steps}")
    stride = num_train_timesteps / steps
    return [int(round(num_train_timesteps - i * stride)) - 1 for i in range(steps)]


def repaint_jump_schedule(steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """RePaint's jump schedule (Lugmayr et al. 2022, `get_schedule_jump`) over step indices.

    Returns positions starting at `steps - 1` (pure noise at the largest timestep) and ending at -1 (the clean
    image); position p stands for the p-th smallest timestep. A move from p to p-1 is one denoising step (one
    network evaluation); from p to p+1 is one forward re-noising step. At every
    `jump_length`-th position (below steps - jump_length) the walk jumps back `jump_length` steps
    `jump_n_sample - 1` times, resampling that stretch.
    """
    if steps < 1 or jump_length < 1 or jump_n_sample < 1:
        raise ValueError("steps, jump_length and jump_n_sample must be >= 1")
    jumps = {j: jump_n_sample - 1 for j in range(0, steps - jump_length, jump_length)}
    t = steps
    positions = []
    while t >= 1:
        t -= 1
        positions.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                positions.append(t)
    positions.append(-1)
    return positions
