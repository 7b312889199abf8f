"""What the training loop needs from a task: its training data and a validation routine.

The loop in `train_diffusion.py` is the same for every task; this module holds the per-task pieces
(data sets, validation subsets and how a validation score is computed and drawn)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from diffusion.data import (
    CTTrainDataset,
    load_ct_slices,
    resolve_task_root,
    split_indices,
    validation_subset,
)
from diffusion.data.tumor import TumorTrainDataset, load_tumor_cases
from diffusion.checkpoint import round_to_slim
from diffusion.inference import CTInpainter, TumorSegmenter, build_denoiser, case_seed, to_uint8
from diffusion.metrics import dice_score, image_mae
from diffusion.figures import plot_cases


def load_training_data(config: dict, data_root, progress: bool):
    """(train dataset, validation cases or None, a line saying where the data came from, a summary line)."""
    task, dc, tc = config["task"], config["data"], config["train"]
    root, where = resolve_task_root(task, data_root)
    if task == "ct":
        cases = load_ct_slices(root, need_truth=True, progress=progress)
        patients = cases.patients
    else:
        cases = load_tumor_cases(root, include_controls=dc["controls"], need_truth=True, progress=progress)
        patients = cases.ids
    patient_rows = [i for i, p in enumerate(patients) if not p.startswith("control_")]
    val_idx = [patient_rows[i] for i in split_indices([patients[i] for i in patient_rows], dc["val_patients"],
                                                      dc["split_seed"], "val")]
    val_set = set(val_idx)
    train_idx = [i for i in range(len(patients)) if i not in val_set]  # controls always train (negatives)
    train = cases.subset(train_idx)
    if task == "ct":
        train_set = CTTrainDataset(train, crop_size=dc["crop_size"], generated_mask_prob=dc["generated_mask_prob"],
                                   flip=dc["flip"], seed=config["seed"])
    else:
        train_set = TumorTrainDataset(train, crop_size=dc["crop_size"], tumor_crop_prob=dc["tumor_crop_prob"],
                                      flip=dc["flip"], seed=config["seed"], control_fraction=dc["control_fraction"])
    val_cases = cases.subset(val_idx)
    val = val_cases.subset(validation_subset([patients[i] for i in val_idx], tc["val_slices"])) if val_idx else None
    summary = (f"train {len(train_idx)} / val {len(val_idx)} {'slices' if task == 'ct' else 'images'} "
               f"({dc['val_patients']} validation patients)")
    return train_set, val, where, summary


class Validator:
    """Samples the validation cases with the EMA weights; returns the task's score and draws a grid."""

    def __init__(self, config: dict, device, bf16: bool):
        cls = CTInpainter if config["task"] == "ct" else TumorSegmenter
        self.predictor = cls(build_denoiser(config), config, device=device, bf16=bf16)

    @property
    def net(self):
        return self.predictor.denoiser.net

    def __call__(self, val, step: int, run: Path) -> float:
        """Scores the weights in `self.net` rounded as a slim checkpoint stores them, with each case's own seed:
        the number `infer.py` gives for the saved checkpoint on the same cases."""
        round_to_slim(self.net)
        out = run / "samples" / f"step_{step:07d}.png"
        if isinstance(self.predictor, CTInpainter):
            preds = self.predictor.predict_batch(val.corrupted, val.missing_mask, val.tissue, val.vertebra,
                                                 seeds=[case_seed(i) for i in val.ids])
            scores = [image_mae(p.image, t) for p, t in zip(preds, val.ct)]
            show = range(min(4, len(val)))
            rows = [[val.corrupted[i], to_uint8(preds[i].image), val.ct[i], np.abs(preds[i].image - val.ct[i])]
                    for i in show]
            plot_cases(out, ["corrupted", "prediction", "truth", "|error|"], rows,
                       [f"{val.ids[i]} MAE {scores[i]:.2f}" for i in show], ["gray", "gray", "gray", "magma"])
        else:
            preds = [self.predictor.predict(image, seed=case_seed(cid)) for cid, image in zip(val.ids, val.images)]
            scores = [dice_score(p.image, t) for p, t in zip(preds, val.labels)]
            show = range(min(4, len(val)))
            rows = [[val.images[i], val.labels[i] * 255, preds[i].image, preds[i].uncertainty] for i in show]
            plot_cases(out, ["PET", "truth", "prediction", "uncertainty"], rows,
                       [f"{val.ids[i]} Dice {scores[i]:.2f}" for i in show], ["gray", "gray", "gray", "viridis"])
        return float(np.mean(scores))
