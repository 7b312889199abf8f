"""Training throughput of a config's network, fp32 against bf16 autocast + channels_last, side by side.

    python -m eval.bench_train --config configs/ct_cpu.yaml --steps 6 --rounds 3
    python -m eval.bench_train --config configs/ct_cpu.yaml --steps 6 --rounds 3 --compile   # + torch.compile

The two settings alternate round by round (so a noisy, shared machine hurts both alike) and the median seconds
per optimiser step of each is turned into images per second. Synthetic inputs of the config's crop size: the
data loader is not measured. With --compile a third setting compiles the network, bf16 with contiguous weights and
inductor's layout pass off (`torch._inductor.config.layout_optimization`): on the CPU the only compiled setting whose
gradients were right (2026-12-07: with channels-last anywhere, most of the UNet got zero gradients, and
`train.compile` is ignored by train_diffusion.py, COMPILE_BROKEN there; docs/results/training_and_serving.md). Its
first step (the compilation) is dropped like every setting's warm-up step, and the compile time is reported.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from diffusion.config import load_config
from diffusion.inference import build_denoiser
from diffusion.tasks import get_task


def time_steps(config: dict, bf16: bool, channels_last: bool, steps: int, seed: int = 0,
               compile_: bool = False) -> list[float]:
    """Seconds of each optimiser step after the first (warm-up, compilation); the first is returned last."""
    torch.manual_seed(seed)
    task = get_task(config["task"])
    denoiser = build_denoiser(config).train()
    if channels_last:
        denoiser.net.to(memory_format=torch.channels_last)
    if compile_:
        denoiser.net.compile()
        import torch._inductor.config as inductor_config
        layout = inductor_config.patch(layout_optimization=False)
    else:
        layout = contextlib.nullcontext()
    optimizer = torch.optim.AdamW(denoiser.net.parameters(), lr=1e-4)
    n, size = config["train"]["batch_size"], config["data"]["crop_size"]
    x0 = torch.rand(n, task.target_channels, size, size) * 2 - 1
    cond = torch.randn(n, task.cond_channels, size, size)
    labels = torch.randint(0, task.num_classes, (n,)) if task.num_classes else None
    weight = torch.ones(n, 1, size, size)
    times, first = [], 0.0
    with layout:  # forward and backward are compiled at the first step
        for i in range(steps + 1):  # the first step warms up and is dropped
            start = time.perf_counter()
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with ctx:
                loss = denoiser.loss(x0, cond, labels, weight).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i:
                times.append(time.perf_counter() - start)
            else:
                first = time.perf_counter() - start
    return times + [first]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/ct_cpu.yaml")
    p.add_argument("--steps", type=int, default=6, help="timed optimiser steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true",
                   help="also bf16 + torch.compile, contiguous weights, inductor's layout pass off")
    args = p.parse_args(argv)
    config = load_config(args.config)
    settings = {"fp32": (False, False, False), "bf16+channels_last": (True, True, False)}
    if args.compile:
        settings["bf16+compile (contiguous)"] = (True, False, True)
    times: dict[str, list[float]] = {k: [] for k in settings}
    first: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(args.rounds):
        for name, (bf16, cl, comp) in settings.items():
            *steps, warm_up = time_steps(config, bf16, cl, args.steps, compile_=comp)
            times[name] += steps
            first[name].append(warm_up)
    batch = config["train"]["batch_size"]
    result = {name: {"median_s_per_step": statistics.median(t), "images_per_s": batch / statistics.median(t),
                     "first_step_s": statistics.median(first[name])} for name, t in times.items()}
    result["speedup"] = result["bf16+channels_last"]["images_per_s"] / result["fp32"]["images_per_s"]
    result.update(config=args.config, batch=batch, crop=config["data"]["crop_size"], threads=torch.get_num_threads())
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
