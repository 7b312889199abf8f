"""Train a conditional diffusion model (CT inpainting or tumor segmentation) with one accelerate loop.

    python train_diffusion.py --config configs/ct_cpu.yaml --out runs/ct_cpu
    python train_diffusion.py --config configs/ct_cpu.yaml --out runs/ct_cpu --resume latest
    python train_diffusion.py --config configs/ct_cpu.yaml --out runs/ct_more --init checkpoints/ct_inpaint.safetensors
    accelerate launch --num_processes 4 train_diffusion.py --config configs/ct_gpu.yaml --out runs/ct_gpu
    accelerate launch --cpu --num_processes 2 train_diffusion.py --config configs/ct_tiny.yaml --out runs/tiny

The run folder gets: config.yaml (resolved), metrics.jsonl, curves.png, samples/step_*.png,
checkpoints/step_*.pt (full state, rotated), last.safetensors and best.safetensors (slim EMA, by validation MAE).

With `distill.teacher` set (configs/*_distill_*.yaml) the run is one round of progressive distillation: the
student starts from the teacher's weights and learns to sample in half the teacher's DDIM steps; its saved
config says `sample.sampler: distilled` and `distill.student_steps`. The next round uses it as the teacher:

    python train_diffusion.py --config configs/ct_distill_cpu.yaml --out runs/ct_distill_4
    python train_diffusion.py --config configs/ct_distill_cpu.yaml --out runs/ct_distill_2 \
        --set distill.teacher=runs/ct_distill_4/last.safetensors
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from diffusion.checkpoint import latest_full_state, load_slim, save_full_state, save_slim
from diffusion.config import apply_overrides, dump_config, load_config
from diffusion.distill import DistillationLoss, load_teacher, plan_round
from diffusion.errors import UserError, run_cli
from diffusion.inference import build_denoiser
from diffusion.tasks import get_task
from diffusion.training import Validator, load_training_data
from eval.plots import plot_curves


class TrainingLoss(torch.nn.Module):
    """Routes the loss through forward() so DDP sees (and synchronises) it."""

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, target, cond, class_labels, weight):
        return self.denoiser.loss(target, cond, class_labels, weight)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML experiment config")
    p.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    p.add_argument("--resume", default=None, help="'latest' or a path to a full-state checkpoint")
    p.add_argument("--init", default=None,
                   help="start from the weights of a slim .safetensors checkpoint (e.g. a released one) with a "
                        "fresh optimiser: continues training across machines where only slim weights travel")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and checkpoint) after this wall time")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set diffusion.prediction_type=epsilon (repeatable)")
    p.add_argument("--data-root", default=None, help="data folder (default $DMIAI_DATA, ./data, ../shared/data)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = apply_overrides(load_config(args.config), args.set)
    if args.max_steps is not None:
        config["train"]["max_steps"] = args.max_steps
    tc = config["train"]
    run = Path(args.out or f"runs/{Path(args.config).stem}")
    # cpu=True without CUDA: several processes started by a launcher (torchrun, or `accelerate launch --multi_gpu`)
    # then form a gloo process group instead of each training alone.
    accelerator = Accelerator(mixed_precision=tc["mixed_precision"], gradient_accumulation_steps=tc["grad_accum"],
                              cpu=not torch.cuda.is_available())
    main_proc = accelerator.is_main_process
    set_seed(config["seed"] + accelerator.process_index)
    task = get_task(config["task"], config["data"])

    train_set, val, where, data_summary = load_training_data(config, args.data_root, progress=main_proc)
    metric_key = f"val_{task.metric}"
    better = (lambda a, b: a > b) if task.higher_is_better else (lambda a, b: a < b)

    teacher = None
    if config["distill"]["teacher"]:
        teacher, teacher_config = load_teacher(config, build_denoiser)
        config = plan_round(config, teacher_config)
    denoiser = build_denoiser(config)
    if tc["channels_last"]:
        denoiser.net.to(memory_format=torch.channels_last)
    if teacher is not None and not args.init and not args.resume:
        denoiser.net.load_state_dict(teacher.net.state_dict())  # the student starts as the teacher
    if args.init and not args.resume:
        state, init_config, _ = load_slim(args.init, expected_task=config["task"])
        if init_config["model"] != config["model"]:
            raise UserError(f"--init {args.init}: its model config differs from {args.config}")
        denoiser.net.load_state_dict(state)
    ema = EMAModel(denoiser.net.parameters(), decay=tc["ema_decay"], use_ema_warmup=True, power=0.75)
    optimizer = torch.optim.AdamW(denoiser.net.parameters(), lr=tc["lr"], weight_decay=tc["weight_decay"])
    lr_scheduler = get_scheduler(tc.get("lr_schedule", "cosine"), optimizer, num_warmup_steps=tc["warmup_steps"],
                                 num_training_steps=tc["max_steps"])
    per_device = max(1, tc["batch_size"] // (accelerator.num_processes * tc["grad_accum"]))
    if len(train_set) < per_device:
        raise UserError(f"the training set has {len(train_set)} items, fewer than one batch of {per_device} per "
                        f"process: lower train.batch_size or add data")
    loader = torch.utils.data.DataLoader(train_set, batch_size=per_device, shuffle=True, drop_last=True,
                                         num_workers=tc["num_workers"])
    if teacher is None:
        loss_module = TrainingLoss(denoiser)
    else:
        teacher.to(accelerator.device)
        if tc["channels_last"]:
            teacher.net.to(memory_format=torch.channels_last)
        loss_module = DistillationLoss(denoiser, teacher, config["distill"]["student_steps"], task.known)
    loss_module, optimizer, loader, lr_scheduler = accelerator.prepare(loss_module, optimizer, loader, lr_scheduler)

    step, epoch, best_score = 0, 0, -math.inf if task.higher_is_better else math.inf
    ckpt_dir = run / "checkpoints"
    if args.resume:
        path = latest_full_state(ckpt_dir) if args.resume == "latest" else Path(args.resume)
        if path is None or not path.is_file():
            raise UserError(f"--resume {args.resume}: no full-state checkpoint in {ckpt_dir}")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["config"]["model"] != config["model"] or state["config"]["task"] != config["task"]:
            raise UserError(f"--resume {path}: its model/task config differs from {args.config}")
        denoiser.net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        step, epoch, best_score = state["step"], state["epoch"] + 1, \
            state.get("best_score", state.get("best_mae"))  # best_mae: checkpoints written before tumor support
        if main_proc:
            print(f"resumed from {path} at step {step}")

    if main_proc:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(dump_config(config))
        print(where)
        print(f"{data_summary}; {sum(p.numel() for p in denoiser.net.parameters()) / 1e6:.2f}M parameters; "
              f"{accelerator.num_processes} process(es) on {accelerator.device}, batch {per_device}/process")
        print(dump_config(config))
    validator = Validator(config, accelerator.device, bf16=tc["mixed_precision"] == "bf16") \
        if main_proc and val is not None else None

    def write_checkpoints():
        if not main_proc:
            return
        save_full_state(ckpt_dir, step, {
            "model": accelerator.unwrap_model(loss_module).denoiser.net.state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(), "step": step,
            "epoch": epoch, "best_score": best_score, "config": config}, keep=tc["keep_checkpoints"])
        save_slim(run / "last.safetensors", ema_state_dict(), config, {"step": step})

    def ema_state_dict():
        net = validator.net if validator else build_denoiser(config).net
        ema.copy_to(net.parameters())
        return net.state_dict()

    metrics = open(run / "metrics.jsonl", "a") if main_proc else None
    start, seen, last_log = time.time(), 0, time.time()
    bar = tqdm(total=tc["max_steps"], initial=step, disable=not main_proc, desc="training")
    stop = step >= tc["max_steps"]
    while not stop:
        train_set.set_epoch(epoch)
        for batch in loader:
            with accelerator.accumulate(loss_module):
                target, cond, labels, weight = task.training_batch(batch)
                with accelerator.autocast():
                    loss = loss_module(target, cond, labels, weight).mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(loss_module.parameters(), tc["grad_clip"])
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            seen += target.shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            ema.step(accelerator.unwrap_model(loss_module).denoiser.net.parameters())
            step += 1
            bar.update(1)
            if main_proc and step % tc["log_every"] == 0:
                now = time.time()
                row = {"step": step, "loss": float(loss.detach()), "lr": lr_scheduler.get_last_lr()[0],
                       "images_per_s": seen / (now - last_log), "elapsed_s": now - start}
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                bar.set_postfix(loss=f"{row['loss']:.4f}", ips=f"{row['images_per_s']:.1f}")
                seen, last_log = 0, now
            out_of_time = args.max_minutes is not None and time.time() - start > 60 * args.max_minutes
            stop = step >= tc["max_steps"] or out_of_time
            if main_proc and validator is not None and (step % tc["val_every"] == 0 or stop):
                ema.copy_to(validator.net.parameters())
                score = validator(val, step, run)
                metrics.write(json.dumps({"step": step, metric_key: score}) + "\n")
                metrics.flush()
                if better(score, best_score):
                    best_score = score
                    save_slim(run / "best.safetensors", validator.net.state_dict(), config,
                              {"step": step, metric_key: score})
                plot_curves(run / "metrics.jsonl", run / "curves.png")
                tqdm.write(f"step {step}: validation {task.metric} {score:.3f} (best {best_score:.3f})")
                last_log = time.time()
            if step % tc["checkpoint_every"] == 0 or stop:
                write_checkpoints()
            accelerator.wait_for_everyone()
            if stop:
                break
        epoch += 1
    bar.close()
    if main_proc:
        metrics.close()
        plot_curves(run / "metrics.jsonl", run / "curves.png")
        print(f"done at step {step}; run folder {run}")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    run_cli(main)
