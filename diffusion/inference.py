"""Loading a model for inference and sampling with it: the one code path shared by training-time
validation, infer.py, eval.ablate and serve.py. One `Predictor` for every task: it loads the checkpoint, builds the
sampler and the ensemble, and calls the task's two hooks, `encode` (inputs -> condition) and `decode` (members ->
prediction). Inference depends on the tasks, never the reverse."""
from __future__ import annotations

import contextlib
import copy
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from einops import rearrange, repeat

from diffusion.checkpoint import is_shard, load_slim, member_states, read_slim_config
from diffusion.config import DEFAULTS, fill_defaults, spec_of
from diffusion.denoiser import Denoiser
from diffusion.errors import CheckpointError, UserError
from diffusion.network import build_unet
from diffusion.tasks import Prediction, get_task
from samplers import SAMPLERS, SamplerSpec, parse_spec, spaced_timesteps
from samplers.ensemble import sample_noise

REPO = Path(__file__).resolve().parent.parent


RELEASES = REPO / "checkpoints"  # the released checkpoints: package data, beside the code in any install


def released_checkpoint(task, required: bool = True) -> Path:
    """The released checkpoint of a task (a name or a task object) in checkpoints/; with `required`, a clear error
    when this install does not hold it."""
    task = get_task(task) if isinstance(task, str) else task
    path = RELEASES / task.released
    if required and not path.is_file():
        raise CheckpointError(f"the released {task.name} checkpoint {task.released} is not in {RELEASES} (this install "
                              f"has no released weights): pass --checkpoint PATH to a slim .safetensors checkpoint")
    return path


def other_released(task, folder: Path | None = None) -> list[Path]:
    """The task's other released checkpoints beside its main one (`<stem>_*.safetensors`: the distilled student,
    the regressor baseline, ...), sorted by name."""
    released = released_checkpoint(task, required=False)
    folder = folder or released.parent
    return sorted(p for p in folder.glob(f"{released.stem}_*.safetensors") if not is_shard(p))


def runs_sampler(config: dict, name: str) -> bool:
    """Whether a checkpoint (its config) can run a sampler by name: `distilled` only a distilled student,
    `regressor` only a regressor, and every diffusion sampler only a diffusion model."""
    if name == "distilled":
        return config["distill"]["student_steps"] > 0
    return (name == "regressor") == (config["diffusion"]["objective"] == "regress")


def released_for_sampler(task, sampler: str | None, folder: Path | None = None) -> Path:
    """The released checkpoint for a sampler name: the task's main one when it can run the sampler, else the first
    of the task's other released checkpoints that can (`--sampler distilled` -> the distilled student, `--sampler
    regressor` -> the regressor baseline, `--sampler ddim` on a task whose release is a regressor -> its diffusion
    model). Reads only the checkpoints' metadata."""
    task = get_task(task) if isinstance(task, str) else task
    main = folder / task.released if folder else released_checkpoint(task)  # a clear error when not installed
    if sampler is None or not main.is_file():
        return main
    for path in [main, *other_released(task, folder)]:
        if runs_sampler(read_slim_config(path, task.name)[0], sampler):
            return path
    return main  # Predictor.check_spec says why it cannot run the sampler


SAMPLER_STEPS = {"ddpm": 1000, "ddim": 50, "repaint": 50}  # steps of a sampler asked for by name alone


def resolve_spec(model_spec: SamplerSpec, sampler: str | None = None, steps: int | None = None,
                 jumps: int | None = None) -> SamplerSpec:
    """The sampler spec of a run: the checkpoint's default (`model_spec`) with the sampler, steps and RePaint jumps
    a user asked for (a sampler named alone takes its usual steps, `SAMPLER_STEPS`). UserError when it is not one."""
    name = sampler or model_spec.name
    if steps is None:
        steps = model_spec.steps if name == model_spec.name else SAMPLER_STEPS.get(name, 1)
    if jumps is None:
        jumps = model_spec.jumps if name == model_spec.name == "repaint" else DEFAULTS["sample"]["jumps"]
    text = f"{name}:{steps}" + (f"x{jumps}" if name == "repaint" else "")
    try:
        return parse_spec(text)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def build_denoiser(config: dict) -> Denoiser:
    task = get_task(config["task"])
    net = build_unet(config["model"], in_channels=task.target_channels + task.cond_channels,
                     out_channels=task.target_channels,
                     num_class_embeds=task.num_classes + 1 if task.num_classes else None)
    d = config["diffusion"]
    return Denoiser(net, prediction_type=d["prediction_type"], num_train_timesteps=d["num_train_timesteps"],
                    beta_schedule=d["beta_schedule"], loss=d["loss"], timestep_power=d["timestep_power"],
                    null_class=task.null_class, class_dropout=d["class_dropout"],
                    objective=d["objective"])


def case_seed(case_id: str, seed: int = 0) -> int:
    """The sampling seed of one case (a slice or image id): a function of the id and the run's seed alone, so a
    case's prediction does not depend on its position in a list or on the batch it is sampled in."""
    return zlib.crc32(case_id.encode()) + 100003 * seed


def member_generators(device: torch.device, seeds: list[int], ensemble: int, first: int = 0) -> list[torch.Generator]:
    """One generator per ensemble member (input-major; members `first`..`first + ensemble - 1`) for the noise a
    sampler draws after the start."""
    return [torch.Generator(device).manual_seed((s * 1000 + e) * 7919 + 1) for s in seeds
            for e in range(first, first + ensemble)]


def case_pixels(inputs: dict) -> int:
    """An input's size: the pixels of its largest image (what a network evaluation's time grows with)."""
    return max((value.size for value in inputs.values() if isinstance(value, np.ndarray)), default=0)


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has bf16 kernels on this CPU (AVX-512 and up). Without them (an AVX2-only CPU) bf16 autocast
    is emulated: a training step of configs/ct_regress_cpu.yaml took 153 s against 25 s in fp32 (README,
    "Training"). A function of its own so tests can stand in for either kind of CPU."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


_warned_bf16: set[str] = set()


def fast_bf16(device: str | torch.device, requested: bool = True) -> bool:
    """bf16 autocast where it was asked for and it pays on `device`; where it would not (a CPU without bf16
    kernels, a GPU without bf16), fp32 and one warning per kind of device."""
    device = torch.device(device)
    if not requested:
        return False
    ok = (device.type == "cpu" and cpu_has_fast_bf16()) or (device.type == "cuda" and torch.cuda.is_bf16_supported())
    if not ok and device.type not in _warned_bf16:
        _warned_bf16.add(device.type)
        what = (f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bf16 kernels" if device.type == "cpu"
                else f"bf16 is not supported on this {device.type}")
        warnings.warn(f"{what}: running in fp32 instead of bf16 autocast", stacklevel=2)
    return ok


def autocast_for(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class Predictor:
    """A slim checkpoint's denoiser ready to sample; the task (from the checkpoint's config) turns inputs into a
    condition (`Task.encode`) and the ensemble's members into a prediction (`Task.decode`).

    A checkpoint may hold several networks of one config (a fold ensemble, `member_states`): then every input gets
    `ensemble` members from each of them (input-major, model by model), and the reduction sees them all."""

    def __init__(self, denoiser: Denoiser | list[Denoiser], config: dict, device: str | torch.device = "cpu",
                 bf16: bool = True, checkpoint: str | None = None):
        self.device = torch.device(device)
        self.models = [d.to(self.device).eval() for d in (denoiser if isinstance(denoiser, list) else [denoiser])]
        if self.device.type == "cpu":
            for d in self.models:
                d.net.to(memory_format=torch.channels_last)
        self.denoiser = self.models[0]
        self.config = config = fill_defaults(config)  # a config from any version, filled once
        self.task = get_task(config["task"], config["data"])  # the options the model was trained with
        self.bf16 = fast_bf16(self.device, bf16)
        self.checkpoint = checkpoint
        self.flip_members = bool(config["sample"]["flip"])

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, task: str | None = None, device: str = "cpu",
                        bf16: bool = True) -> Predictor:
        """The predictor of a slim checkpoint (default: `task`'s released one); with `task`, a checkpoint of
        another task is a one-line error."""
        if path is None and task is None:
            raise UserError("a checkpoint or a task (for its released checkpoint) is needed")
        path = Path(path) if path is not None else released_checkpoint(task)
        state, config, _ = load_slim(path, expected_task=task)
        models = []
        for member in member_states(state):
            models.append(build_denoiser(config))
            models[-1].net.load_state_dict(member)
        return cls(models, config, device=device, bf16=bf16, checkpoint=str(path))

    def members(self, ensemble: int) -> int:
        """The members an input gets for an `ensemble` setting: `ensemble` from each network."""
        return ensemble * len(self.models)

    def with_sample(self, **settings) -> Predictor:
        """The same network with other inference settings (any key of the config's `sample` section: sampler,
        steps, jumps, ensemble, flip, threshold, min_component), without reloading it: for side-by-side runs."""
        unknown = sorted(set(settings) - set(DEFAULTS["sample"]))
        if unknown:
            raise UserError(f"unknown sample setting(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS['sample'])}")
        other = copy.copy(self)
        other.config = {**self.config, "sample": {**self.config["sample"], **settings}}
        other.flip_members = bool(other.config["sample"]["flip"])
        return other

    def with_networks(self, networks: int | None) -> Predictor:
        """The same predictor with `networks` of its networks, spread evenly over them (network i * n // k of n, for
        i < k: a fold ensemble of two runs, stored fold by fold, keeps the first run of every fold at k = n / 2), or
        itself for None or n: the service's cheapest degrade of a fold ensemble."""
        n = len(self.models)
        if networks is None or networks == n:
            return self
        if not 1 <= networks <= n:
            raise UserError(f"networks={networks}: this model has {n} network(s); choose 1..{n}")
        other = copy.copy(self)
        other.models = [self.models[i * n // networks] for i in range(networks)]
        other.denoiser = other.models[0]
        return other

    def default_spec(self) -> tuple[SamplerSpec, int]:
        try:
            return spec_of(self.config["sample"]), int(self.config["sample"]["ensemble"])
        except ValueError as exc:
            raise UserError(f"{self.checkpoint or 'this model'}: its sample setting is not a sampler ({exc})") from None

    def ensemble_for(self, inputs: dict, ensemble: int | None = None) -> int:
        """The members per network an input gets: `ensemble` when given; otherwise the checkpoint's own
        (`sample.ensemble`), and one for an input of more pixels than `sample.ensemble_max_pixels` (the time budget
        as a rule of the input's size: a fold ensemble's tallest images get one pass per network)."""
        if ensemble is not None:
            return ensemble
        sample = self.config["sample"]
        limit = sample.get("ensemble_max_pixels")
        return 1 if limit and case_pixels(inputs) > int(limit) else int(sample["ensemble"])

    def check_spec(self, spec: SamplerSpec) -> None:
        """A distilled student samples only at the step count it was distilled for, the regressor only as
        `regressor:1`, and a regressor checkpoint with nothing else."""
        where = self.checkpoint or "this model"
        student_steps = int(self.config["distill"]["student_steps"])
        regressor = self.config["diffusion"]["objective"] == "regress"
        if spec.name == "distilled" and spec.steps != student_steps:
            raise UserError(f"sampler {spec}: {where} is " + (f"a student distilled for {student_steps} steps"
                            if student_steps else "not a distilled student") + "; train one with configs/*distill*")
        if (spec.name == "regressor") != regressor:
            raise UserError(f"sampler {spec}: {where} is " + ("a regressor: use regressor:1" if regressor
                                                              else "a diffusion model, not a regressor"))

    def sample(self, cond: torch.Tensor, labels: torch.Tensor | None, spec: SamplerSpec, ensemble: int,
               seeds: list[int], known_x0: torch.Tensor | None = None, known_mask: torch.Tensor | None = None,
               callback=None) -> torch.Tensor:
        """E samples per input and network, input-major: member k of input i (network m's member e is k = m * E + e)
        starts from the noise seeded (seeds[i], k) and draws its later noise from its own generator, so a member does
        not depend on the batch. With `flip_members` (config `sample.flip`), the odd-numbered members see the
        horizontally mirrored input (test-time flip augmentation inside the ensemble): each network's pair with
        E = 2, every other network with E = 1. Returns x0 (N*E*networks, C, H, W) float32 on the CPU."""
        self.check_spec(spec)
        flip = self.flip_members and self.members(ensemble) > 1

        def rep(t: torch.Tensor | None, flipped: torch.Tensor | None = None) -> torch.Tensor | None:
            if t is None:
                return None
            t = repeat(t.to(self.device), "n ... -> (n e) ...", e=ensemble)
            return t if flipped is None else torch.where(flipped, t.flip(-1), t)

        outputs = []
        for m, model in enumerate(self.models):  # network m's members are numbered m * ensemble + e
            members = [m * ensemble + e for e in range(ensemble)]
            flipped = (torch.tensor(members * len(seeds), device=self.device) % 2 == 1).view(-1, 1, 1, 1) \
                if flip else None
            cond_e = rep(cond, flipped)
            known = None if known_x0 is None else {"x0": rep(known_x0, flipped), "mask": rep(known_mask, flipped)}
            noise = sample_noise((self.task.target_channels, *cond.shape[-2:]),
                                 [s * 1000 + e for s in seeds for e in members]).to(self.device)
            generator = member_generators(self.device, seeds, ensemble, first=m * ensemble)
            timesteps = spaced_timesteps(model.num_train_timesteps, spec.steps)
            with autocast_for(self.device, self.bf16):
                x0 = SAMPLERS[spec.name](model, noise, timesteps,
                                         extra_args={"cond": cond_e, "class_labels": rep(labels)},
                                         known=known, generator=generator, callback=callback, **spec.knobs())
            x0 = x0.float()
            if flipped is not None:  # odd members saw the mirrored input: mirror their answer back
                x0 = torch.where(flipped, x0.flip(-1), x0)
            outputs.append(rearrange(x0.cpu(), "(n e) ... -> n e ...", e=ensemble))
        return rearrange(torch.cat(outputs, 1), "n e ... -> (n e) ...")

    @torch.no_grad()
    def predict_one(self, inputs: dict, spec: SamplerSpec | None = None, ensemble: int | None = None,
                    seed: int = 0, callback=None) -> Prediction:
        """One case's inputs (as `Task.layout.read_case` and `Task.codec.parse_request` give them) -> its prediction: the
        checkpoint's default sampler and ensemble unless given (`ensemble_for`: the default depends on the input's
        size when the checkpoint says so); `seed` seeds the members' noise; `callback(state)` after every sampler step
        (it may raise to stop sampling)."""
        spec, ensemble = spec or self.default_spec()[0], self.ensemble_for(inputs, ensemble)
        encoded = self.task.encode(inputs, self.multiple)
        known = encoded.known or {}
        x0 = self.sample(encoded.cond, encoded.labels, spec, ensemble, [seed], known_x0=known.get("x0"),
                         known_mask=known.get("mask"), callback=callback)
        return self.task.decode(x0, inputs, self.config["sample"])

    @property
    def multiple(self) -> int:
        """The network's spatial multiple: every down-sampling level halves the size."""
        return 2 ** (len(self.config["model"]["block_out_channels"]) - 1)


def load_predictor(task: str, path: str | Path | None = None, device: str = "cpu") -> Predictor:
    """The predictor of a slim checkpoint of `task` (default: the task's released one)."""
    return Predictor.from_checkpoint(path, task=task, device=device)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
