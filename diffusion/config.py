"""YAML configs: model, schedule, data and optimiser live in the file; run settings on the command line.

The schema below is the one place where a config key, its default, its type and its allowed values are written.
`DEFAULTS` is derived from it; `load_config` / `apply_overrides` check every value when a config is built, so a bad
value ends in one line naming the key, the value and what is allowed, before any data is read:

    error: config configs/ct_cpu.yaml (--set): train.lr='abc': should be a number
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from diffusion.errors import UserError
from samplers import REPAINT_JUMPS, parse_spec

PredictionType = Literal["epsilon", "v_prediction", "sample"]
Objective = Literal["diffusion", "regress"]  # regress: the same net as a deterministic regressor (L1, no noise)
Loss = Literal["l1", "l2", "bce_dice"]
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
LrSchedule = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
MixedPrecision = Literal["no", "fp16", "bf16"]
LogWith = Literal["none", "tensorboard", "all"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    val_patients: int = Field(53, ge=0)           # patients held out for validation (patient-level split)
    split_seed: int = 0
    calib_patients: int = Field(0, ge=0)          # training patients held out to choose thresholds etc. on
    folds: int = Field(0, ge=0)                   # > 0: K-fold cross-validation by patient (val_patients unused)
    fold: int = Field(0, ge=0)                    # with folds: the fold held out (0..folds-1)
    inner_folds: int = Field(0, ge=0)             # > 0: nested cross-validation: fold `fold`'s training patients
    # dealt into this many inner folds, inner fold `inner_fold` held out as the calibration patients (never trained
    # on), the outer fold's validation patients untouched (the score of the nested ensemble against one network)
    inner_fold: int = Field(0, ge=0)
    crop_size: int = Field(128, ge=8)
    crop_width: Optional[int] = Field(None, ge=8)  # tumor: crop width (None: square; 400: whole-width crops)
    generated_mask_prob: float = Field(0.5, ge=0.0, le=1.0)  # ct: else a real mask of another slice
    flip: bool = True
    controls: bool = True                         # tumor: healthy controls as negatives in training
    control_fraction: Optional[float] = Field(None, ge=0.0, le=1.0)  # tumor: share of items from the controls
                                                  # (None: as many as exist)
    tumor_crop_prob: float = Field(0.5, ge=0.0, le=1.0)  # tumor: share of crops centred near a tumor pixel
    tumor_weight: float = Field(1.0, gt=0.0)      # tumor: loss weight of a tumor pixel (background: 1)
    intensity_aug: float = Field(0.0, ge=0.0)     # tumor: uptake contrast and gamma jitter (0: off)
    position_channel: bool = True                 # tumor: the vertical-position condition channel (false: zeros)
    synthetic_fraction: float = Field(0.0, ge=0.0, le=1.0)  # tumor: share of items that are controls with tumors
                                                  # of the training patients pasted in (0: off)
    synthetic_max: int = Field(3, ge=1)           # tumor: at most this many pasted tumors per synthetic item
    zoom: float = Field(0.0, ge=0.0, le=1.0)      # tumor: crops scaled by [1 / (1 + zoom), 1 + zoom] (0: off)
    rotate: float = Field(0.0, ge=0.0, le=180.0)  # tumor: crops turned by up to this many degrees (0: off)

    @model_validator(mode="after")
    def _fold(self):
        if self.folds == 1 or (self.folds and self.fold >= self.folds):
            raise ValueError(f"folds={self.folds}, fold={self.fold}: folds is 0 (off) or >= 2, and fold is in "
                             f"0..folds-1")
        if self.inner_folds and (not self.folds or self.inner_folds == 1 or self.inner_fold >= self.inner_folds
                                 or self.calib_patients):
            raise ValueError(f"inner_folds={self.inner_folds}, inner_fold={self.inner_fold}: nested folds need "
                             f"folds >= 2, inner_folds >= 2, inner_fold in 0..inner_folds-1 and calib_patients 0 "
                             f"(the inner fold is the calibration side)")
        return self


class ModelConfig(_Section):
    block_out_channels: list[int] = Field([16, 64, 128, 192], min_length=1)
    layers_per_block: int = Field(1, ge=1)
    attention_levels: list[int] = []              # levels with self-attention in their down/up blocks
    norm_num_groups: int = Field(16, ge=1)
    mid_attention: bool = True
    attention_head_dim: int = Field(8, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _shapes(self):
        bad = [c for c in self.block_out_channels if c < 1 or c % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels={self.block_out_channels}: every entry must be a positive multiple "
                             f"of model.norm_num_groups ({self.norm_num_groups}; group norm), not {bad}")
        levels = len(self.block_out_channels)
        if any(not 0 <= a < levels for a in self.attention_levels):
            raise ValueError(f"attention_levels={self.attention_levels}: levels are 0..{levels - 1} "
                             f"(one per entry of model.block_out_channels)")
        return self


class DiffusionConfig(_Section):
    prediction_type: PredictionType = "sample"
    num_train_timesteps: int = Field(1000, ge=2)
    beta_schedule: BetaSchedule = "squaredcos_cap_v2"
    loss: Loss = "l1"
    timestep_power: float = Field(0.5, gt=0.0)    # t = T u^power: < 1 spends more training on high noise
    class_dropout: float = Field(0.1, ge=0.0, le=1.0)
    objective: Objective = "diffusion"

    @model_validator(mode="after")
    def _loss_fits(self):
        if self.loss == "bce_dice" and self.prediction_type != "sample":
            raise ValueError(f"loss='bce_dice' predicts the target's logits: it needs prediction_type 'sample', "
                             f"not {self.prediction_type!r}")
        return self


class DistillConfig(_Section):                    # set teacher to distill
    mode: Literal["progressive", "ensemble"] = "progressive"  # progressive (Salimans & Ho 2022: half the steps a
                                                  # round) or ensemble (1 step trained towards the teacher's default
                                                  # ensemble median, computed on the fly)
    teacher: Optional[str] = None                 # slim checkpoint of the teacher (a trained model or a student)
    teacher_steps: int = Field(8, ge=1)           # DDIM steps of a non-distilled teacher; a student brings its own
    student_steps: int = Field(0, ge=0)           # set by the training run: half the teacher's steps (ensemble: 1)
    teacher_ensemble: int = Field(1, ge=1)        # ensemble mode: set by the run from the teacher's sample settings
    teacher_flip: bool = False


class TrainConfig(_Section):
    batch_size: int = Field(16, ge=1)             # the global batch: it must divide by processes x grad_accum
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3.0e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(100, ge=0)
    lr_schedule: LrSchedule = "cosine"            # diffusers.optimization.get_scheduler's names
    max_steps: int = Field(100000, ge=1)
    mixed_precision: MixedPrecision = "bf16"      # `accelerate launch --mixed_precision` / `accelerate config` win
    channels_last: bool = True
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    grad_clip: float = Field(1.0, gt=0.0)
    num_workers: int = Field(0, ge=0)
    compile: bool = False                         # ignored, with a warning: compiled training got zero gradients
    log_with: LogWith = "none"                    # accelerate trackers beside metrics.jsonl (all: every installed)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=0)        # full states kept (0: all)
    val_every: int = Field(500, ge=1)
    val_slices: int = Field(16, ge=0)             # cases of in-training validation (0: none)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        return "no" if value is False else value  # YAML 1.1 reads `no` as False


class SampleConfig(_Section):                     # default inference settings stored with the checkpoint
    sampler: str = "ddim"
    steps: int = Field(1, ge=1)
    jumps: int = Field(REPAINT_JUMPS, ge=1)       # repaint: jump_n_sample
    ensemble: int = Field(1, ge=1)
    threshold: float = Field(0.5, gt=0.0, lt=1.0)  # tumor: probability threshold, chosen on calibration patients
    min_component: int = Field(0, ge=0)           # tumor: drop predicted components smaller than this (pixels)
    uptake_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # tumor: keep in each component the pixels of at least this
    # share of its peak uptake (0: off); chosen out of the scored patients with the threshold
    flip: bool = False                            # odd ensemble members see the mirrored input (flip TTA)
    ensemble_max_pixels: int | None = Field(None, ge=1)  # an input of more pixels (its largest image) gets one
    # member per network instead of `ensemble`: the time budget as a rule of the input's size, so that what is
    # scored is what is served; null: every input gets `ensemble`
    interval_margins: dict[str, float] = Field(default_factory=dict)  # CT: conformal margin (grey levels) per
    # interval level, fitted by eval.calibrate_interval on calibration patients; valid for this section's sampler,
    # steps, ensemble and flip only
    interval_score: Literal["shift", "scaled"] = "shift"  # the margins' unit: 1, or the interval's own width + 1

    @model_validator(mode="after")
    def _spec(self):
        try:
            spec_of(self.model_dump())
        except ValueError as exc:
            raise ValueError(f"sampler={self.sampler!r} (steps {self.steps}): {exc}") from None
        return self


class Config(_Section):
    task: str = "ct"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)

    @model_validator(mode="after")
    def _sampler_fits_model(self):
        sampler, regress = self.sample.sampler, self.diffusion.objective == "regress"
        if self.distill.teacher:  # a distillation round sets its student's sampler itself
            return self
        if (sampler == "regressor") != regress:
            raise ValueError(f"sample.sampler={sampler!r}: " + (
                "a regressor (diffusion.objective 'regress') samples only with 'regressor'" if regress else
                "'regressor' needs diffusion.objective 'regress'"))
        if sampler == "distilled" and self.distill.student_steps != self.sample.steps:
            raise ValueError(f"sample.sampler='distilled': only a distilled student (distill.student_steps "
                             f"{self.distill.student_steps}) samples with it, at sample.steps = its student_steps")
        return self



def spec_of(sample: dict):
    """The sampler spec (`samplers.SamplerSpec`) of a config's `sample` section; ValueError when it is not one."""
    sample = SampleConfig.model_construct(**sample)  # the defaults of keys it lacks, without checking it again
    name = sample.sampler
    return parse_spec(f"{name}:{sample.steps}" + (f"x{sample.jumps}" if name == "repaint" else ""))


DEFAULTS: dict = Config().model_dump()


def _one_line(exc: ValidationError) -> str:
    """Each of pydantic's errors as `section.key=value: what is allowed`, joined into one line."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ").replace("Input should be", "should be")
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {key!r}")
        elif isinstance(err.get("input"), dict):  # a check across a section's keys: its message names them
            parts.append(f"{key}.{msg}" if key else msg)
        else:
            parts.append(f"{key}={err.get('input')!r}: {msg}")
    return "; ".join(parts)


def model_config(config: dict) -> dict:
    """A config's `model` section with the defaults of keys added since it was written (e.g. a released
    checkpoint's config from before `attention_head_dim`): two configs build the same network iff these agree."""
    return fill_defaults(config)["model"]


def deep_update(base: dict, update: dict, where: str = "", strict: bool = True, where_file: str = "config") -> dict:
    """`base` with the values of `update` (nested); a key `base` lacks is an error (`strict`) or kept."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in out:
            if strict:
                raise UserError(f"{where_file}: unknown key {where + key!r}")
            out[key] = copy.deepcopy(value)
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = deep_update(out[key], value, where + key + ".", strict, where_file)
        else:
            out[key] = value
    return out


def check_config(config: dict, where: str = "config") -> dict:
    """The config with every value checked against the schema (and coerced: `--set train.lr=1e-3` is a float);
    a bad value raises UserError with one line naming the key, the value and what is allowed."""
    try:
        return Config.model_validate(config).model_dump()
    except ValidationError as exc:
        raise UserError(f"{where}: {_one_line(exc)}") from None


def fill_defaults(config: dict) -> dict:
    """A stored config (a checkpoint's, written by an older version) with the defaults of keys added since."""
    return deep_update(DEFAULTS, config, strict=False)


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
    return check_config(deep_update(DEFAULTS, raw, where_file=str(path)), f"config {path}")


def dump_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """`KEY.PATH=VALUE` strings (VALUE parsed as YAML) applied to a resolved config, then checked; unknown keys and
    bad values are errors."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected KEY=VALUE (e.g. diffusion.loss=l2)")
        update: dict = {}
        node = update
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: the value is not valid YAML") from None
        config = deep_update(config, update, where_file="--set")
    return check_config(config, "--set") if overrides else config
