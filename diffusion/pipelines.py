"""diffusers pipelines over this repository's models: the released weights used outside it.

    from diffusion.pipelines import CTInpaintPipeline, TumorSegmentationPipeline

    pipe = CTInpaintPipeline.from_checkpoint("checkpoints/ct_inpaint.safetensors")   # or .from_pretrained(DIR)
    out = pipe(corrupted=corrupted, mask=mask, tissue=tissue, vertebra=12)          # arrays or PIL images
    out.prediction, out.uncertainty                                                 # (256, 256) uint8, float
    pipe.save_pretrained("exported/ct_inpaint")      # model_index.json, unet/, scheduler/ (diffusers layout)

    seg = TumorSegmentationPipeline.from_pretrained("exported/tumor_seg")
    out = seg(image=pet)            # (H, W) or (H, W, 3) uint8 PET MIP -> out.prediction {0, 255}, out.probability

A pipeline registers the network (a diffusers `UNet2DModel`: `UNet2DModel.from_pretrained(DIR, subfolder="unet")`
loads it alone) and the noise schedule (a `DDPMScheduler` config), and keeps the rest of the repository's config
(`dmiai_config` in model_index.json: task, parameterisation, default sampler and ensemble, threshold). Calling it
runs the very code path of `infer.py` (`diffusion.inference.Predictor.predict_one`): the same input and seed give
the same prediction. `python -m eval.export` writes such a folder from a slim checkpoint, with its model card.

A fold ensemble (a checkpoint of several networks, e.g. the tumor release) keeps its first network as `unet` and
the others as `unet_member1/` ... beside it (each a `UNet2DModel` folder); every call runs them all, as `infer.py`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.utils import BaseOutput
from diffusers.utils import logging as diffusers_logging

from diffusion.checkpoint import load_slim, member_states
from diffusion.config import fill_defaults
from diffusion.denoiser import Denoiser
from diffusion.errors import UserError
from diffusion.inference import Predictor, build_denoiser, resolve_spec
from diffusion.tasks import get_task


@dataclass
class DMIAIPipelineOutput(BaseOutput):
    prediction: np.ndarray            # the competition's answer: CT (H, W) uint8 grey; tumor (H, W) uint8 {0, 255}
    uncertainty: np.ndarray           # (H, W) per-pixel spread of the ensemble (grey levels / probability)
    probability: np.ndarray | None = None  # tumor: (H, W) mean tumor probability


def as_array(image, name: str, channels: int | None = None) -> np.ndarray:
    """A PIL image or array -> uint8 numpy array; `channels=1` also takes (H, W, 3) with identical channels."""
    array = np.array(image)  # a copy: PIL's buffer is read-only
    if array.dtype != np.uint8:
        raise UserError(f"{name}: expected uint8 pixels, got {array.dtype}")
    if channels == 1 and array.ndim == 3:
        if array.shape[2] not in (3, 4) or not (np.array_equal(array[..., 0], array[..., 1])
                                                 and np.array_equal(array[..., 0], array[..., 2])):
            raise UserError(f"{name}: expected a grey image (H, W) or identical RGB channels, got {array.shape}")
        array = array[..., 0]
    if array.ndim != 2:
        raise UserError(f"{name}: expected a 2-D image, got shape {array.shape}")
    return np.ascontiguousarray(array)  # a channel slice of RGB is not contiguous


def cast(unet: UNet2DModel, dtype: torch.dtype) -> UNet2DModel:
    """`unet.to(dtype)` without diffusers' log line about modules kept in float32 (this UNet has none)."""
    if unet.dtype != dtype:
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            unet.to(dtype)
        finally:
            diffusers_logging.set_verbosity(verbosity)
    return unet


class DMIAIPipeline(DiffusionPipeline):
    """The generic part: building the repository's predictor from the registered modules, and sampling with it.
    Subclasses name the task and turn the task's inputs into the predictor's."""

    task_name = ""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, dmiai_config: dict | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(dmiai_config=dmiai_config)
        self._predictor: Predictor | None = None
        self.extra_members: list[UNet2DModel] = []  # a fold ensemble's networks after the first (`unet`)

    # --- building -------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path) -> DMIAIPipeline:
        """The pipeline of a slim `.safetensors` checkpoint of this repository (e.g. a released one)."""
        state, config, _ = load_slim(path, expected_task=cls.task_name)
        nets = []
        for member in member_states(state):
            nets.append(build_denoiser(config).net)
            nets[-1].load_state_dict(member)
        d = config["diffusion"]
        scheduler = DDPMScheduler(num_train_timesteps=d["num_train_timesteps"], beta_schedule=d["beta_schedule"],
                                  prediction_type=d["prediction_type"], clip_sample=True)
        pipe = cls(unet=nets[0], scheduler=scheduler, dmiai_config=config)
        pipe.extra_members = nets[1:]
        return pipe

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> DMIAIPipeline:
        """diffusers' loading, plus a fold ensemble's further networks (`unet_member<k>/`) from a local folder."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        folder = Path(pretrained_model_name_or_path)
        found = sorted((int(m.group(1)), f) for f in (folder.iterdir() if folder.is_dir() else [])
                       if (m := re.fullmatch(r"unet_member(\d+)", f.name)))
        if [k for k, _ in found] != list(range(1, len(found) + 1)):
            raise UserError(f"{folder}: ensemble members {[k for k, _ in found]}, expected unet_member1..N")
        pipe.extra_members = [UNet2DModel.from_pretrained(f, torch_dtype=pipe.unet.dtype) for _, f in found]
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """diffusers' layout (model_index.json, unet/, scheduler/), plus `unet_member<k>/` for a fold ensemble."""
        super().save_pretrained(save_directory, **kwargs)
        for k, net in enumerate(self.extra_members, start=1):
            net.save_pretrained(Path(save_directory) / f"unet_member{k}",
                                safe_serialization=kwargs.get("safe_serialization", True))

    @property
    def networks(self) -> list[UNet2DModel]:
        """`unet` and a fold ensemble's further networks."""
        return [self.unet, *self.extra_members]

    @property
    def dmiai(self) -> dict:
        return fill_defaults(self.config.dmiai_config or {"task": self.task_name})

    def predictor(self, bf16: bool = True) -> Predictor:
        """The repository's predictor over this pipeline's UNet and schedule (built once, on the pipeline's device)."""
        if self._predictor is None or self._predictor.device != self.device or self._predictor.bf16 != bf16:
            config, s = self.dmiai, self.scheduler.config
            d = {**config["diffusion"], "num_train_timesteps": s.num_train_timesteps,
                 "beta_schedule": s.beta_schedule, "prediction_type": s.prediction_type}
            task = get_task(config["task"])
            denoisers = [Denoiser(cast(net, torch.float32),  # exported in half precision, computed in float32
                                  prediction_type=d["prediction_type"], num_train_timesteps=d["num_train_timesteps"],
                                  beta_schedule=d["beta_schedule"], loss=d["loss"], timestep_power=d["timestep_power"],
                                  null_class=task.null_class, class_dropout=d["class_dropout"],
                                  objective=d["objective"]) for net in self.networks]
            self._predictor = Predictor(denoisers, {**config, "diffusion": d}, device=self.device, bf16=bf16)
        return self._predictor

    # --- sampling -------------------------------------------------------------------------------------------
    def task_inputs(self, **inputs) -> dict:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, inputs: dict, sampler: str | None = None, steps: int | None = None, ensemble: int | None = None,
                flip: bool | None = None, seed: int = 0, bf16: bool = True) -> DMIAIPipelineOutput:
        """Sample the task's inputs. Without settings: the checkpoint's default (sampler, steps, ensemble, flip).
        `seed` seeds the ensemble's noise; `infer.py` uses `diffusion.inference.case_seed(case_id, --seed)`."""
        predictor = self.predictor(bf16)
        if flip is not None:
            predictor = predictor.with_sample(flip=flip)
        spec = resolve_spec(predictor.default_spec()[0], sampler, steps)
        prediction = predictor.predict_one(inputs, spec=spec, ensemble=ensemble, seed=seed, callback=None)
        return DMIAIPipelineOutput(prediction=predictor.task.output_image(prediction),
                                   uncertainty=prediction.uncertainty, probability=prediction.probability)


class CTInpaintPipeline(DMIAIPipeline):
    """CT inpainting (DATA.md section 1): fill the blanked pixels of a 256x256 CT slice.

    Inputs (uint8 arrays or PIL images, 256x256): `corrupted` (the slice, 0 where missing), `mask` (missing pixels:
    255 or 1, known: 0), `tissue` (0 outside the body, 100 body, 255 torso fat), and `vertebra` (int 0..24, the
    nearest vertebra level). The network's input, built from them: 5 channels in this order: the noisy target x_t,
    the known pixels (CT in [-1, 1] where known, 0 where missing), the missing mask (0/1), the body (tissue > 0)
    and the torso fat (tissue == 255); the vertebra level is the class label (25 levels, label 25 = none given).
    Output: `prediction` (256, 256) uint8 grey levels: known pixels kept exactly, 0 outside the body."""

    task_name = "ct"

    def task_inputs(self, corrupted, mask, tissue, vertebra: int) -> dict:
        images = {name: as_array(image, name, channels=1)
                  for name, image in (("corrupted", corrupted), ("mask", mask), ("tissue", tissue))}
        shapes = {image.shape for image in images.values()}
        if len(shapes) != 1:
            raise UserError(f"corrupted, mask and tissue must have one shape, got {sorted(shapes)}")
        return {"corrupted": images["corrupted"], "missing_mask": (images["mask"] > 0).astype(np.uint8),
                "tissue": images["tissue"], "vertebra": int(vertebra)}

    def __call__(self, corrupted, mask, tissue, vertebra: int, **settings) -> DMIAIPipelineOutput:
        return self.predict(self.task_inputs(corrupted, mask, tissue, vertebra), **settings)


class TumorSegmentationPipeline(DMIAIPipeline):
    """Tumor segmentation (DATA.md section 2): mark the tumor pixels of a whole-body MIP-PET image.

    Input: `image`, a uint8 array or PIL image, (H, W) grey or (H, W, 3) with identical channels, width 400 and
    height up to 991 in the competition (dark = high uptake, as the organisers give it). The network's input: 3
    channels in this order: the noisy mask x_t (zeros for the deterministic segmenter), the uptake (inverted
    intensity in [-1, 1]) and the vertical position (row / 991 in [-1, 1]); no class label. The whole image is
    padded to the network's multiple and cropped back. Output: `prediction` (H, W) uint8 {0, 255} (the mean
    probability of the ensemble over `sample.threshold`, components under `sample.min_component` pixels dropped, each
    component cut to `sample.uptake_fraction` of its peak uptake),
    `probability` and `uncertainty` (the members' spread)."""

    task_name = "tumor"

    def task_inputs(self, image) -> dict:
        return {"image": as_array(image, "image", channels=1)}

    def __call__(self, image, **settings) -> DMIAIPipelineOutput:
        return self.predict(self.task_inputs(image), **settings)


PIPELINES = {cls.task_name: cls for cls in (CTInpaintPipeline, TumorSegmentationPipeline)}


def pipeline_for(path) -> DMIAIPipeline:
    """The pipeline of a slim checkpoint, whatever its task."""
    from diffusion.checkpoint import read_slim_config

    task = read_slim_config(path)[0]["task"]
    if task not in PIPELINES:
        raise UserError(f"checkpoint {path}: no diffusers pipeline for task {task!r} (known: {', '.join(PIPELINES)})")
    return PIPELINES[task].from_checkpoint(path)
