"""What the training loop needs from a task, for any task: its training data split by patient, and a validator.

The loop in `train_diffusion.py` is the same for every task; the task object supplies the data set and the
predictor, and validation is `diffusion.evaluate.run_cases` (what infer.py runs) on the validation cases."""
from __future__ import annotations

from pathlib import Path

from diffusion.checkpoint import round_to_slim
from diffusion.data.split import has_calibration, split_by_config, validation_subset
from diffusion.evaluate import run_cases
from diffusion.inference import Predictor, build_denoiser
from diffusion.tasks import Case, Task


def load_training_data(task: Task, config: dict, data_root, progress: bool):
    """(train dataset, task folder, validation cases, a line saying where the data came from, a summary line).
    Validation: `train.val_slices` cases of the validation patients, spread over as many patients as possible;
    the calibration patients (`data.calib_patients`) are left out of both; extra cases (healthy controls) always
    train."""
    dc, tc = config["data"], config["train"]
    root, where = task.layout.resolve_root(data_root)
    cases = task.layout.list_cases(root, include_extra=dc["controls"])
    train_cases = split_by_config(cases, dc, "train")
    # with calibration patients, in-training validation (and so best.safetensors) is chosen on them, never on the
    # validation patients whose score is reported
    watched = "calib" if has_calibration(dc) else "val"
    val_cases = split_by_config(cases, dc, watched)
    train_set = task.training_dataset(root, train_cases, config, progress)
    val = [val_cases[i] for i in validation_subset([c.patient for c in val_cases], tc["val_slices"])]
    summary = (f"train {len(train_cases)} / {watched} {len(val_cases)} cases "
               f"({len({c.patient for c in val_cases})} {watched} patients watched in training)")
    return train_set, root, val, where, summary


class Validator:
    """Scores the validation cases with the EMA weights as `infer.py` would score the saved checkpoint, and draws
    the first cases to samples/step_*.png."""

    def __init__(self, task: Task, config: dict, device, bf16: bool):
        self.task = task
        self.predictor = Predictor(build_denoiser(config), config, device=device, bf16=bf16)

    @property
    def net(self):
        return self.predictor.denoiser.net

    def __call__(self, root: Path, cases: list[Case], step: int, run: Path) -> float:
        """The weights in `self.net` are first rounded as a slim checkpoint stores them; every case is sampled
        with its own seed: the number `infer.py` gives for the saved checkpoint on the same cases."""
        round_to_slim(self.net)
        spec, ensemble = self.predictor.default_spec()
        metrics = run_cases(self.task, self.predictor, root, cases, spec, ensemble, seed=0,
                            overview=run / "samples" / f"step_{step:07d}.png", progress=False)
        return metrics[self.task.metric]
