"""Train a conditional diffusion model (CT inpainting or tumor segmentation) with one accelerate loop.

    python train_diffusion.py --config configs/ct_cpu.yaml --out runs/ct_cpu
    python train_diffusion.py --config configs/ct_cpu.yaml --out runs/ct_cpu --resume latest
    python train_diffusion.py --config configs/ct_cpu.yaml --out runs/ct_more --init checkpoints/ct_inpaint.safetensors
    python train_diffusion.py --config configs/ct_cpu.yaml --out runs/ct_b --init runs/ct_a/last.safetensors \
        --continue-schedule      # the same run on another machine, from its slim weights and saved step
    accelerate launch --num_processes 4 --mixed_precision bf16 train_diffusion.py --config configs/ct_gpu.yaml --out runs/ct_gpu
    accelerate launch --multi_gpu --num_processes 2 train_diffusion.py --config configs/ct_tiny.yaml --out runs/tiny
    dmiai-train --config configs/ct_cpu.yaml --out runs/ct_cpu      # the same, as the installed console command

The run folder gets: config.yaml (resolved: what ran), provenance.jsonl (one line per start: the command line, the
git commit, the versions), metrics.jsonl, curves.png, samples/step_*.png, checkpoints/step_*.pt (full state,
rotated), last.safetensors and best.safetensors (slim EMA, by validation score); with `train.log_with: tensorboard`
(or `all`: every tracker accelerate finds installed) also the trackers' files under logs/.

The config is checked before any data is read: a bad value ends in one line naming the key (exit status 2).
Mixed precision: `accelerate launch --mixed_precision X` and `accelerate config` (which the launcher passes on) win
over the config's `train.mixed_precision`; run without the launcher, the config decides. One line says which won,
and on a CPU without bf16 kernels bf16 falls back to fp32 (with a warning); config.yaml records what ran.

On N processes (GPUs, or CPU processes over gloo) `train.batch_size` is the global batch: it must divide by
N x `train.grad_accum`. The learning-rate schedule counts optimiser steps, whatever N. A run is a function of
(config, step): the data order is fixed by (seed, epoch), every micro-batch reseeds the random generators from
(seed, process, micro-batch), so `--resume` continues exactly where the run stopped. SIGTERM or Ctrl-C stops
the run after the current step with a checkpoint (a second one stops at once); --max-minutes does the same on time.

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
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import is_tensorboard_available, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from diffusion.checkpoint import latest_full_state, load_slim, save_full_state, save_slim
from diffusion.config import apply_overrides, dump_config, load_config, model_config
from diffusion.distill import DistillationLoss, EnsembleDistillationLoss, load_teacher, plan_round
from diffusion.errors import UserError, run_cli
from diffusion.figures import plot_curves
from diffusion.inference import build_denoiser, fast_bf16
from diffusion.network import grow_into, grown_model_config, silence_noisy_input
from diffusion.tasks import get_task
from diffusion.training import Validator, load_training_data


class StopRequest:
    """SIGTERM (a scheduler's pre-emption, `kill`) and SIGINT (Ctrl-C) ask the loop to stop after the current step
    with a checkpoint, through the same trigger as --max-minutes, so every process stops at the same step; a second
    signal stops at once. The previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: str | None = None
        self.previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
            return self
        for s in self.SIGNALS:
            before = signal.getsignal(s)
            if before is not signal.SIG_IGN:  # a signal the parent ignores (SIGINT of a `cmd &` job) stays ignored
                self.previous[s] = signal.SIG_DFL if before is None else before  # None: set outside Python
                signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:  # asked twice: the signal's own behaviour now
            signal.signal(signum, self.previous[signum])
            signal.raise_signal(signum)
            return
        self.requested = signal.Signals(signum).name
        tqdm.write(f"{self.requested}: stopping after this step with a checkpoint (send it again to stop now)")

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class TrainingLoss(torch.nn.Module):
    """Routes the loss through forward() so DDP sees (and synchronises) it."""

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, target, cond, class_labels, weight):
        return self.denoiser.loss(target, cond, class_labels, weight)


class EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch, index) keys in a shuffled order fixed by (seed, epoch): the same on every process (accelerate
    shards the batches), and items that are a function of their key alone, so persistent workers see the epoch and
    a resumed run replays nothing."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        return iter([(self.epoch, int(i)) for i in order])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML experiment config")
    p.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    p.add_argument("--resume", default=None, help="'latest' or a path to a full-state checkpoint")
    p.add_argument("--init", default=None,
                   help="start from the weights of a slim .safetensors checkpoint (e.g. a released one) with a "
                        "fresh optimiser: continues training across machines where only slim weights travel; a "
                        "config that adds model.attention_levels or raises model.layers_per_block grows the network, "
                        "each new block starting as the identity (function-preserving)")
    p.add_argument("--continue-schedule", action="store_true",
                   help="with --init: go on with the run the slim checkpoint came from, at its step (saved in it): "
                        "the same learning-rate schedule, data order and random draws; only the optimiser's moments "
                        "start fresh (a run that spans machines when only slim weights travel)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop this run at optimiser step N (with a checkpoint; the schedule stays train.max_steps, "
                        "and --resume latest goes on from there)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop (and checkpoint) after this wall time; every process stops at the same step")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set diffusion.prediction_type=epsilon (repeatable)")
    p.add_argument("--data-root", default=None, help="data folder (default $DMIAI_DATA, ./data, ../shared/data)")
    args = p.parse_args(argv)
    if args.continue_schedule and not args.init:
        raise UserError("--continue-schedule needs --init (the slim checkpoint to go on from)")
    for name in ("max_steps", "max_minutes"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    return args


def resolve_mixed_precision(configured: str) -> tuple[str, str]:
    """(the mixed precision to train with, one line saying where it came from). accelerate's launcher puts its
    `--mixed_precision` (or the `accelerate config` default) into ACCELERATE_MIXED_PRECISION: that wins over the
    config's `train.mixed_precision`, which decides when the script runs without the launcher."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher and launcher != configured:
        return launcher, (f"mixed precision: {launcher} (accelerate launch --mixed_precision / accelerate config; "
                          f"the config's train.mixed_precision {configured} is not used)")
    return configured, f"mixed precision: {configured} (train.mixed_precision" + \
        (", as accelerate launch says)" if launcher else ")")


def trackers(log_with: str) -> str | list | None:
    """accelerate's `log_with` for `train.log_with`; a tracker that is not installed is an error now, not later."""
    if log_with == "none":
        return None
    if log_with == "tensorboard" and not is_tensorboard_available():
        raise UserError("train.log_with=tensorboard: tensorboard is not installed (pip install tensorboard)")
    return log_with


def tracker_config(config: dict) -> dict:
    """The resolved config flattened to `section.key: scalar` (what trackers store as hyper-parameters)."""
    flat = {}
    for section, values in config.items():
        for key, value in (values.items() if isinstance(values, dict) else [("", values)]):
            name = f"{section}.{key}" if key else section
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def provenance(argv: list[str] | None, accelerator: Accelerator, precision_line: str) -> dict:
    """What started this run: the command line, the code's git commit (and whether the work tree had changes),
    the machine and the library versions; one line of provenance.jsonl per start."""
    import accelerate
    import diffusers

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": [sys.executable, *sys.argv] if argv is None
            else ["train_diffusion.main", *argv], "cwd": os.getcwd(), "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": None if status is None else bool(status), "processes": accelerator.num_processes,
            "device": str(accelerator.device), "mixed_precision": precision_line, "host": platform.node(),
            "cpu": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "accelerate": accelerate.__version__}


def continued_step(path: str, max_steps: int) -> int:
    """The optimiser step a slim checkpoint was saved at (--continue-schedule)."""
    _, _, meta = load_slim(path)
    step = meta.get("step")
    if not isinstance(step, int):
        raise UserError(f"--continue-schedule: {path} does not record the step it was saved at")
    if not 0 < step < max_steps:
        raise UserError(f"--continue-schedule: {path} was saved at step {step}, not inside this run's "
                        f"train.max_steps {max_steps}")
    return step


def per_process_batch(tc: dict, num_processes: int) -> int:
    """The global batch split over processes and accumulation steps; it must divide exactly (EDM asserts it)."""
    split = num_processes * tc["grad_accum"]
    if tc["batch_size"] % split:
        raise UserError(f"train.batch_size {tc['batch_size']} does not divide by {num_processes} process(es) x "
                        f"train.grad_accum {tc['grad_accum']}: choose a multiple of {split}")
    return tc["batch_size"] // split


def micro_batch_seed(seed: int, process: int, micro: int) -> int:
    """The seed of one micro-batch's random draws (timesteps, noise, label dropout) on one process."""
    return int(np.random.SeedSequence([seed, process, micro]).generate_state(1)[0])


def build_model(config: dict, args, teacher):
    """The denoiser to train: fresh, the teacher's weights (distillation) or a slim checkpoint's (--init)."""
    denoiser = build_denoiser(config)
    if teacher is not None and not args.init and not args.resume:
        denoiser.net.load_state_dict(teacher.net.state_dict())  # the student starts as the teacher
    if args.init and not args.resume:
        state, init_config, _ = load_slim(args.init, expected_task=config["task"])
        old, new = model_config(init_config), model_config(config)
        if old == new:
            denoiser.net.load_state_dict(state)
            if init_config["diffusion"]["objective"] == "regress" and config["diffusion"]["objective"] == "diffusion":
                silence_noisy_input(denoiser.net)
                print(f"--init {args.init}: a regressor; its weights on the noisy input x_t set to zero, so at t = T-1 "
                      f"this diffusion model computes what the regressor did")
        elif grown_model_config(old, new):
            added = grow_into(denoiser.net, state, old["layers_per_block"])
            print(f"--init {args.init}: grown from {old['layers_per_block']} to {new['layers_per_block']} layers per "
                  f"block, self-attention at model.attention_levels {new['attention_levels']}: {len(added)} new "
                  f"block(s), each starting as the identity")
        else:
            raise UserError(f"--init {args.init}: its model config differs from {args.config} (beyond "
                            f"self-attention at more model.attention_levels or more model.layers_per_block)")
    if config["train"]["channels_last"]:
        denoiser.net.to(memory_format=torch.channels_last)
    return denoiser


def make_loader(train_set, per_process: int, tc: dict, seed: int):
    if len(train_set) < per_process:
        raise UserError(f"the training set has {len(train_set)} items, fewer than one batch of {per_process} per "
                        f"process: lower train.batch_size or add data")
    sampler = EpochSampler(len(train_set), seed)
    workers = tc["num_workers"]
    loader = torch.utils.data.DataLoader(train_set, batch_size=per_process, sampler=sampler, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         pin_memory=torch.cuda.is_available())
    return loader, sampler


def load_resume_state(args, config: dict, ckpt_dir: Path) -> dict:
    path = latest_full_state(ckpt_dir) if args.resume == "latest" else Path(args.resume)
    if path is None or not path.is_file():
        raise UserError(f"--resume {args.resume}: no full-state checkpoint in {ckpt_dir}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if model_config(state["config"]) != model_config(config) or state["config"]["task"] != config["task"]:
        raise UserError(f"--resume {path}: its model/task config differs from {args.config}")
    state["path"] = path
    return state


@dataclass
class TrainState:
    """Where a run is, in the names the full-state checkpoint stores: the optimiser step, the epoch, the batches
    done in that epoch, the micro-batches done (they seed the random draws) and the best validation score so far."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    micro: int = 0
    best_score: float = math.nan

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict, grad_accum: int) -> None:
        self.step = state["step"]
        self.best_score = state.get("best_score", state.get("best_mae"))  # best_mae: before tumor support
        if "batch" in state:  # where in the epoch the run stopped
            self.epoch, self.batch, self.micro = state["epoch"], state["batch"], state["micro"]
        else:  # written before exact resume: the next epoch
            self.epoch, self.batch, self.micro = state["epoch"] + 1, 0, self.step * grad_accum


def restore(state: dict, train: TrainState, net, ema, optimizer, lr_scheduler, grad_accum: int) -> None:
    """Load a full training state into the network, EMA, optimiser, schedule and `train`."""
    net.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    train.load_state_dict(state, grad_accum)


def continue_schedule(train: TrainState, args, tc: dict, lr_scheduler, ema) -> None:
    """--continue-schedule: the step saved in the slim weights, its schedule position, data position and EMA decay."""
    train.step = continued_step(args.init, tc["max_steps"])
    train.micro = train.step * tc["grad_accum"]
    with warnings.catch_warnings():  # stepping the schedule before any optimiser step is what is meant here
        warnings.simplefilter("ignore")
        for _ in range(train.step):
            lr_scheduler.step()
    ema.optimization_step = train.step  # the EMA decay goes on where it was (its warm-up is over)


def ema_weights(ema, target: torch.nn.Module) -> dict:
    """The EMA weights, as the state dict of `target` (a network of the run's config)."""
    ema.copy_to(target.parameters())
    return target.state_dict()


def save(run: Path, train: TrainState, net, ema, optimizer, lr_scheduler, config: dict, target: torch.nn.Module) -> None:
    """A rotated full state (resume) and the slim EMA weights `last.safetensors` (inference, --init)."""
    save_full_state(run / "checkpoints", train.step, {
        "model": net.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(), **train.state_dict(), "config": config},
        keep=config["train"]["keep_checkpoints"])
    save_slim(run / "last.safetensors", ema_weights(ema, target), config, {"step": train.step})


def validate(run: Path, train: TrainState, validator: Validator, ema, data_dir: Path, val: list, config: dict,
             metric_key: str, higher_is_better: bool) -> dict:
    """Score the EMA weights on the validation cases as infer.py would; a better score than any before writes
    best.safetensors. Returns the metrics row."""
    ema.copy_to(validator.net.parameters())
    score = validator(data_dir, val, train.step, run)
    if math.isnan(train.best_score) or (score > train.best_score if higher_is_better else score < train.best_score):
        train.best_score = score
        save_slim(run / "best.safetensors", validator.net.state_dict(), config, {"step": train.step, metric_key: score})
    plot_curves(run / "metrics.jsonl", run / "curves.png")
    tqdm.write(f"step {train.step}: validation {metric_key[4:]} {score:.3f} (best {train.best_score:.3f})")
    return {"step": train.step, metric_key: score}


COMPILE_BROKEN = (
    "train.compile is ignored, the network trains eagerly: with torch.compile (Module.compile, torch 2.13, diffusers' "
    "UNet2DModel) the loss was the eager one but most of the network got zero gradients (from the first "
    "down-sampler on; measured 2026-12-07, docs/results/training_and_serving.md), so a compiled run trained only "
    "its outer layers. The fault comes with channels-last in inductor; compiled without it the gradients are right "
    "but a step is no faster than eager bf16 + channels-last (1.01x)")


def make_loss(config: dict, task, denoiser, teacher, device) -> torch.nn.Module:
    """The module whose forward() gives the per-sample loss: the training objective, or a distillation round's."""
    if teacher is None:
        return TrainingLoss(denoiser)
    teacher.to(device)
    if config["train"]["channels_last"]:
        teacher.net.to(memory_format=torch.channels_last)
    dc = config["distill"]
    if dc["mode"] == "ensemble":
        return EnsembleDistillationLoss(denoiser, teacher, dc["teacher_ensemble"], dc["teacher_flip"], task.known)
    return DistillationLoss(denoiser, teacher, dc["student_steps"], task.known)


def main(argv=None) -> int:
    # Set-up: the config (checked before anything else), precision, trackers, processes.
    args = parse_args(argv)
    config = apply_overrides(load_config(args.config), args.set)
    tc = config["train"]
    run = Path(args.out or f"runs/{Path(args.config).stem}")
    tc["mixed_precision"], precision_line = resolve_mixed_precision(tc["mixed_precision"])
    if tc["mixed_precision"] == "bf16" and not fast_bf16("cuda" if torch.cuda.is_available() else "cpu"):
        tc["mixed_precision"] = "no"  # emulated bf16 is many times slower than fp32; config.yaml records what ran
        precision_line += "; this CPU has no bf16 kernels: fp32"
    log_with = trackers(tc["log_with"])
    # cpu=True without CUDA: several processes started by a launcher (torchrun, or `accelerate launch --multi_gpu`)
    # then form a gloo process group instead of each training alone.
    accelerator = Accelerator(mixed_precision=tc["mixed_precision"], gradient_accumulation_steps=tc["grad_accum"],
                              cpu=not torch.cuda.is_available(), log_with=log_with, project_dir=str(run / "logs"))
    main_proc, rank = accelerator.is_main_process, accelerator.process_index
    set_seed(config["seed"])  # the same initial weights on every process
    task = get_task(config["task"], config["data"])
    per_process = per_process_batch(tc, accelerator.num_processes)

    # Data: the training set and the validation cases, split by patient.
    train_set, data_dir, val, where, data_summary = load_training_data(task, config, args.data_root, main_proc)
    metric_key = f"val_{task.metric}"

    # Model: fresh, the teacher's (distillation) or a slim checkpoint's (--init); EMA, optimiser, schedule.
    teacher = None
    if config["distill"]["teacher"]:
        teacher, teacher_config = load_teacher(config, build_denoiser)
        config = plan_round(config, teacher_config)
    denoiser = build_model(config, args, teacher)
    ema = EMAModel(denoiser.net.parameters(), decay=tc["ema_decay"], use_ema_warmup=True, power=0.75)
    optimizer = torch.optim.AdamW(denoiser.net.parameters(), lr=tc["lr"], weight_decay=tc["weight_decay"])
    # Not passed to accelerator.prepare: a prepared scheduler steps once per process, which would run the schedule
    # N times too fast on N processes. Stepped here once per optimiser step, its state means the same on any N.
    lr_scheduler = get_scheduler(tc["lr_schedule"], optimizer, num_warmup_steps=tc["warmup_steps"],
                                 num_training_steps=tc["max_steps"])
    loader, sampler = make_loader(train_set, per_process, tc, config["seed"])

    # Resume: a full state (--resume), or the step of slim weights (--continue-schedule).
    train = TrainState()
    if args.resume:
        state = load_resume_state(args, config, run / "checkpoints")
        restore(state, train, denoiser.net, ema, optimizer, lr_scheduler, tc["grad_accum"])
        if main_proc:
            print(f"resumed from {state['path']} at step {train.step}")
    elif args.continue_schedule:
        continue_schedule(train, args, tc, lr_scheduler, ema)
        if main_proc:
            print(f"continuing from {args.init} at step {train.step} (fresh optimiser moments)")
    ema.to(accelerator.device)
    if tc["compile"]:  # not honoured: see COMPILE_BROKEN
        warnings.warn(COMPILE_BROKEN, stacklevel=1)
        tc["compile"] = False  # config.yaml records what ran
    loss_module = make_loss(config, task, denoiser, teacher, accelerator.device)
    loss_module, optimizer, loader = accelerator.prepare(loss_module, optimizer, loader)
    if args.continue_schedule and not args.resume:  # where in the data the run was: every epoch has len(loader)
        train.epoch, train.batch = divmod(train.micro, len(loader))
    net = accelerator.unwrap_model(loss_module).denoiser.net

    # Run folder: the resolved config, the provenance line, trackers, the validator (main process only).
    if main_proc:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(dump_config(config))
        with open(run / "provenance.jsonl", "a") as handle:
            handle.write(json.dumps(provenance(argv, accelerator, precision_line)) + "\n")
        print(where)
        print(precision_line)
        print(f"{data_summary}; {sum(p.numel() for p in denoiser.net.parameters()) / 1e6:.2f}M parameters; "
              f"{accelerator.num_processes} process(es) on {accelerator.device}, batch {per_process}/process")
        print(dump_config(config))
    if log_with:
        accelerator.init_trackers(run.name, config=tracker_config(config))
    validator = Validator(task, config, accelerator.device, bf16=tc["mixed_precision"] == "bf16") \
        if main_proc and val else None
    slim_target = validator.net if validator else build_denoiser(config).net  # where the EMA weights are saved from

    # Train.
    metrics = open(run / "metrics.jsonl", "a") if main_proc else None  # noqa: SIM115 (open for the whole loop)
    start, seen, last_log = time.time(), 0, time.time()
    last_step = min(tc["max_steps"], args.max_steps or tc["max_steps"])
    bar = tqdm(total=last_step, initial=train.step, disable=not main_proc, desc="training")
    stop = train.step >= last_step
    with StopRequest() as interrupt:
        while not stop:
            sampler.set_epoch(train.epoch)
            loader.set_epoch(train.epoch)
            epoch_loader = accelerator.skip_first_batches(loader, train.batch) if train.batch else loader
            for batch in epoch_loader:
                torch.manual_seed(micro_batch_seed(config["seed"], rank, train.micro))
                train.micro, train.batch = train.micro + 1, train.batch + 1
                with accelerator.accumulate(loss_module):
                    target, cond, labels, weight = task.training_batch(batch)
                    with accelerator.autocast():
                        loss = loss_module(target, cond, labels, weight).mean()
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(loss_module.parameters(), tc["grad_clip"])
                    optimizer.step()
                    if accelerator.sync_gradients:
                        lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                seen += target.shape[0] * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                ema.step(net.parameters())
                train.step += 1
                bar.update(1)
                if main_proc and train.step % tc["log_every"] == 0:
                    now = time.time()
                    row = {"step": train.step, "loss": float(loss.detach()), "lr": lr_scheduler.get_last_lr()[0],
                           "images_per_s": seen / (now - last_log), "elapsed_s": now - start}
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                    accelerator.log({k: v for k, v in row.items() if k != "step"}, step=train.step)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", ips=f"{row['images_per_s']:.1f}")
                    seen, last_log = 0, now
                # one decision for every process: the main process's clock, shared through accelerate's trigger
                out_of_time = args.max_minutes is not None and time.time() - start > 60 * args.max_minutes
                if interrupt.requested or (main_proc and out_of_time):
                    accelerator.set_trigger()
                stop = accelerator.check_trigger() or train.step >= last_step
                if validator is not None and (train.step % tc["val_every"] == 0 or stop):
                    row = validate(run, train, validator, ema, data_dir, val, config, metric_key,
                                   task.higher_is_better)
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                    accelerator.log({metric_key: row[metric_key]}, step=train.step)
                    last_log = time.time()
                if main_proc and (train.step % tc["checkpoint_every"] == 0 or stop):
                    save(run, train, net, ema, optimizer, lr_scheduler, config, slim_target)
                accelerator.wait_for_everyone()
                if stop:
                    break
            else:
                train.epoch, train.batch = train.epoch + 1, 0

    # End.
    bar.close()
    if main_proc:
        metrics.close()
        plot_curves(run / "metrics.jsonl", run / "curves.png")
        print(f"done at step {train.step}; run folder {run}"
              + (f" (stopped by {interrupt.requested}: go on with --resume latest)" if interrupt.requested else ""))
    # The DDP wrapper's reducer holds the process group: free it first, so that the group dies in
    # destroy_process_group (which lets go of the GIL) and not in the reducer's destructor at return, which joins
    # gloo's worker threads while holding the GIL: that deadlocked once at exit (2 CPU processes under load, torch
    # 2.13), a worker thread still needing the GIL to free the last collective's tensors.
    del loss_module
    accelerator.free_memory()
    accelerator.end_training()
    return 0


def cli() -> None:
    """Console entry point `dmiai-train`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
