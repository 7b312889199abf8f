"""YAML configs: model, schedule, data and optimiser live in the file; run settings on the command line."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from diffusion.errors import UserError

DEFAULTS: dict = {
    "task": "ct",
    "seed": 0,
    "data": {
        "val_patients": 53,          # patients held out for validation (patient-level split)
        "split_seed": 0,
        "calib_patients": 0,         # training patients held out to choose thresholds and post-processing on
        "crop_size": 128,
        "generated_mask_prob": 0.5,  # else a real mask of another slice
        "flip": True,
        "controls": True,            # tumor: healthy controls as negatives in training
        "control_fraction": None,    # tumor: share of training items from the controls (None: as many as exist)
        "tumor_crop_prob": 0.5,      # tumor: share of crops centred near a tumor pixel
        "tumor_weight": 1.0,         # tumor: loss weight of a tumor pixel (background: 1)
        "intensity_aug": 0.0,        # tumor: uptake contrast and gamma jitter of the training crops (0: off)
        "position_channel": True,    # tumor: the vertical-position condition channel (false: zeros)
    },
    "model": {
        "block_out_channels": [16, 64, 128, 192],
        "layers_per_block": 1,
        "attention_levels": [],
        "norm_num_groups": 16,
        "mid_attention": True,
        "attention_head_dim": 8,
        "dropout": 0.0,
    },
    "diffusion": {
        "prediction_type": "sample",
        "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2",
        "loss": "l1",
        "timestep_power": 0.5,
        "class_dropout": 0.1,
        "objective": "diffusion",    # or "regress": the deterministic regressor baseline (same net, L1, no noise)
    },
    "distill": {                     # set teacher to distill
        "mode": "progressive",       # progressive (Salimans & Ho 2022: half the steps a round) or ensemble (1 step
                                     # trained towards the teacher's default ensemble median, computed on the fly)
        "teacher": None,             # slim checkpoint of the teacher (a trained model or an earlier student)
        "teacher_steps": 8,          # DDIM steps of a non-distilled teacher; a student teacher brings its own
        "student_steps": 0,          # set by the training run: half the teacher's steps (ensemble mode: 1)
        "teacher_ensemble": 1,       # ensemble mode: set by the run from the teacher's sample settings
        "teacher_flip": False,
    },
    "train": {
        "batch_size": 16,
        "grad_accum": 1,
        "lr": 3.0e-4,
        "weight_decay": 0.0,
        "warmup_steps": 100,
        "lr_schedule": "cosine",
        "max_steps": 100000,
        "mixed_precision": "bf16",
        "channels_last": True,
        "ema_decay": 0.999,
        "grad_clip": 1.0,
        "num_workers": 0,
        "compile": False,            # torch.compile the network (measure first: eval.bench_train --compile)
        "log_every": 10,
        "checkpoint_every": 200,
        "keep_checkpoints": 2,
        "val_every": 500,
        "val_slices": 16,
    },
    "sample": {                      # default inference settings stored with the checkpoint
        "sampler": "ddim",
        "steps": 1,
        "jumps": 10,                 # repaint: jump_n_sample
        "ensemble": 1,
        "threshold": 0.5,            # tumor: probability threshold, chosen on calibration patients
        "min_component": 0,          # tumor: drop predicted components smaller than this (pixels)
        "flip": False,               # odd ensemble members see the mirrored input (flip test-time augmentation)
    },
}


def model_config(config: dict) -> dict:
    """A config's `model` section with the defaults of keys added since it was written (e.g. a released
    checkpoint's config from before `attention_head_dim`): two configs build the same network iff these agree."""
    return {**DEFAULTS["model"], **config.get("model", {})}


def deep_update(base: dict, update: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in out:
            raise UserError(f"config: unknown key {where + key!r}")
        if isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = deep_update(out[key], value, where + key + ".")
        else:
            out[key] = value
    return out


def normalize(config: dict) -> dict:
    """YAML 1.1 reads `no` as False: `train.mixed_precision: no` means accelerate's "no"."""
    if config.get("train", {}).get("mixed_precision") is False:
        config["train"]["mixed_precision"] = "no"
    return config


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config {path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise UserError(f"config {path}: expected a mapping at the top level")
    return normalize(deep_update(DEFAULTS, raw))


def dump_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """`KEY.PATH=VALUE` strings (VALUE parsed as YAML) applied to a resolved config; unknown keys are errors."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected KEY=VALUE (e.g. diffusion.loss=l2)")
        update: dict = {}
        node = update
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        node[parts[-1]] = parsed
        config = deep_update(config, update)
    return normalize(config)
