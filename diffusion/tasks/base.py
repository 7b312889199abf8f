"""What every task provides. Generic code (training, inference, scoring, serving) calls these and nothing else.

A task knows its data and how to turn it into (target, condition, label, loss weight); it knows nothing of
networks: channel counts are derived here and handed to the network factory."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffusion.data.images import read_png, write_png
from diffusion.data.roots import resolve_root


@dataclass(frozen=True)
class Case:
    """One input of a task: an id (file names derive from it), the patient it belongs to (the split is by
    patient) and whether it is an extra case outside the split (tumor: a healthy control, always trained on)."""

    id: str
    patient: str
    extra: bool = False


@dataclass
class Encoded:
    """One input as the network sees it (a batch of one): the condition (1, C, H, W), the class label (1,) or None,
    and the pixels the samplers keep (RePaint's known region: {"x0", "mask"}, or None)."""

    cond: torch.Tensor
    labels: torch.Tensor | None = None
    known: dict | None = None


@dataclass
class Prediction:
    """One input's answer, from its ensemble's members."""

    image: np.ndarray        # CT: (H, W) float grey levels, known pixels kept, 0 outside the body; tumor: the mask
    uncertainty: np.ndarray  # (H, W) per-pixel spread across the ensemble (grey levels / probability)
    probability: np.ndarray | None = None  # tumor: (H, W) mean tumor probability over the ensemble
    members: np.ndarray | None = None      # CT: (E, H, W) every member's answer (intervals: `interval_bounds`)


@dataclass
class Example:
    """A case read from disk: the predictor's inputs (what a served request decodes to) and the truth, if any."""

    case: Case
    inputs: dict
    truth: np.ndarray | None = None


class Layout:
    """Where a task's cases live on disk and how they are read and written: the competition's folder layout, spelled
    here only (file names, validation), and where predictions go."""

    folder: str = ""                 # the task's folder under a data root (e.g. ct-inpainting)
    marker: str = ""                 # a sub-folder that identifies the task folder (e.g. corrupted)
    extra_name: str | None = None    # what an extra case is called in reports (tumor: "control")

    def resolve_root(self, data_root) -> tuple[Path, str]:
        return resolve_root(self.folder, self.marker, data_root)

    def list_cases(self, root: Path, include_extra: bool = False) -> list[Case]:
        raise NotImplementedError

    def has_truth(self, root: Path, cases: list[Case]) -> bool:
        raise NotImplementedError

    def read_case(self, root: Path, case: Case, with_truth: bool) -> Example:
        raise NotImplementedError

    def prediction_path(self, out: Path, case: Case) -> Path:
        return Path(out) / "predictions" / f"{case.id}.png"

    def write_prediction(self, out: Path, case: Case, image: np.ndarray) -> None:
        write_png(self.prediction_path(out, case), image)

    def read_prediction(self, out: Path, case: Case) -> np.ndarray:
        return read_png(self.prediction_path(out, case))


class Codec:
    """The competition's HTTP format: request and response models, a request -> the predictor's inputs (bad input
    raises `diffusion.codec.BadInput` naming the field), an answer -> a response."""

    service_name: str = ""
    request_model = None
    response_model = None

    def parse_request(self, request) -> dict:
        raise NotImplementedError

    def encode_response(self, image: np.ndarray) -> dict:
        raise NotImplementedError

    def request_body(self, root: Path, case: Case) -> dict:
        """The competition's request for a case on disk (load tests, smoke checks)."""
        raise NotImplementedError

    def warm_up_inputs(self) -> dict:
        """Inputs of the largest size the service must answer, to time a network evaluation at start-up."""
        raise NotImplementedError


class Report:
    """What a person reads besides the score: the overview figure's row per case and the uncertainty report. The
    defaults fit a task whose answer is an image and has no uncertainty report."""

    overview_columns: tuple[str, ...] = ("input", "prediction", "truth")
    overview_cmaps: tuple[str, ...] = ("gray", "gray", "gray")
    has_intervals: bool = False      # predictions carry ensemble members with a per-pixel scale (CT: grey levels)
    interval_resolution: float | None = None  # the grid the answer is submitted on (CT: 1 grey level)

    def overview_row(self, example: Example, prediction: Prediction, image: np.ndarray, record: dict) -> list:
        return [next(iter(example.inputs.values())), image, example.truth]

    def uncertainty_stats(self, example: Example, prediction: Prediction, image: np.ndarray) -> dict | None:
        """Sums that judge the uncertainty map against the errors, {key: (numerator, denominator)}, added over the
        cases and turned into a report by `uncertainty_summary`; None when the task has none."""
        return None

    def uncertainty_summary(self, totals: dict[str, list[float]]) -> dict:
        return {key: (num / den if den else None) for key, (num, den) in totals.items()}

    def interval_region(self, example: Example) -> np.ndarray:
        """The pixels whose interval coverage is measured (the predicted ones)."""
        raise NotImplementedError


class Task:
    """Base class of the tasks (frozen dataclasses in `diffusion/tasks/<task>/`). A task is its model side (channels,
    the training batch, the predictor's two hooks, the score) and three parts: `layout` (its data on disk), `codec`
    (its HTTP format) and `report` (figures and uncertainty). Subclasses set the attributes and implement the
    methods that raise NotImplementedError."""

    name: str = ""
    released: str = ""               # file name of the released checkpoint in checkpoints/
    target_channels: int = 1
    cond_channels: int = 1
    num_classes: int = 0             # class labels (0: none); index num_classes is the null class
    metric: str = "mae"
    higher_is_better: bool = False
    decision_settings: tuple[str, ...] = ()  # `sample` settings that turn the ensemble into the answer (reported)
    layout: Layout = Layout()
    codec: Codec = Codec()
    report: Report = Report()

    def with_options(self, data_config: dict) -> Task:
        """The task with the training options of a config's `data` section (default: none)."""
        return self

    @property
    def null_class(self) -> int | None:
        return self.num_classes if self.num_classes else None

    # --- training ------------------------------------------------------------------------------------------
    def training_dataset(self, root: Path, cases: list[Case], config: dict, progress: bool):
        """A torch Dataset whose items are a function of an (epoch, index) key (see train_diffusion.EpochSampler)."""
        raise NotImplementedError

    def training_batch(self, batch: dict[str, torch.Tensor]):
        """A collated batch -> (target, condition, class labels or None, loss weight)."""
        raise NotImplementedError

    def known(self, target: torch.Tensor, cond: torch.Tensor) -> dict | None:
        """Pixels the samplers replace by the noised truth (RePaint): {"x0", "mask"}, or None."""
        return None

    # --- prediction: the two hooks of the generic `diffusion.inference.Predictor` --------------------------
    def encode(self, inputs: dict, multiple: int) -> Encoded:
        """A case's inputs (as `layout.read_case` and `codec.parse_request` give them) -> what the network sees;
        `multiple`: the network's spatial multiple (another size is padded here and cropped back in `decode`)."""
        raise NotImplementedError

    def decode(self, x0: torch.Tensor, inputs: dict, sample: dict) -> Prediction:
        """The ensemble's members (E, C, H, W) in [-1, 1] for one input -> its prediction; `sample`: the checkpoint's
        inference settings (e.g. the tumor threshold)."""
        raise NotImplementedError

    def output_image(self, prediction: Prediction) -> np.ndarray:
        """The uint8 image a prediction is submitted as (before the file format)."""
        return np.clip(np.rint(prediction.image), 0, 255).astype(np.uint8)

    # --- score ---------------------------------------------------------------------------------------------
    def score(self, image: np.ndarray, truth: np.ndarray) -> dict:
        """Per-case values; `self.metric` among them."""
        raise NotImplementedError
