"""Tumor post-processing chosen on calibration patients: the threshold and component-size sweep, cross-fitting,
several checkpoints, and the refusal to calibrate on the wrong patients."""
import json

import numpy as np
import pytest
import torch

from diffusion.checkpoint import load_slim


def test_threshold_sweep_and_calibrated_checkpoint(trained_tumor_tiny, tumor_root, tmp_path):
    from eval import calibrate

    truth = np.zeros((8, 8), np.uint8)
    truth[:4] = 1
    prob = np.where(truth > 0, 0.7, 0.2)
    scores = calibrate.sweep([prob], [truth])
    assert scores[0.5] == 1.0 and scores[0.1] < 1.0 and scores[0.9] == 0.0
    out = tmp_path / "calibrated.safetensors"
    assert calibrate.main(["--checkpoint", str(trained_tumor_tiny / "last.safetensors"), "--data-root",
                           str(tumor_root), "--split", "all", "--cross-fit", "3", "--out", str(out)]) == 0
    _, config, meta = load_slim(out, expected_task="tumor")
    report = json.loads((tmp_path / "calibrated.safetensors.threshold.json").read_text())
    assert config["sample"]["threshold"] == report["threshold"] and meta["threshold_images"] == 3
    assert config["sample"]["min_component"] == report["min_component"]
    assert report["dice"] == max(report["sweep"].values())
    assert 0 <= report["cross_fit"]["dice"] <= report["dice"] and len(report["cross_fit"]["settings"]) == 3


def test_the_dice_table_applies_the_uptake_cut_it_is_given():
    """A probability map that covers the tumor and a faint rim: the cut at half the peak uptake removes the rim, so
    the table's Dice is 1 with the cut and less without it."""
    from eval import calibrate

    truth = np.zeros((8, 8), np.uint8)
    truth[2:6, 2:6] = 1
    image = np.full((8, 8), 255, np.uint8)
    image[1:7, 1:7] = 255 - 40     # the rim: uptake 40
    image[2:6, 2:6] = 255 - 200    # the tumor: uptake 200
    prob = np.zeros((8, 8))
    prob[1:7, 1:7] = 0.9
    cut = calibrate.dice_table([prob], [truth], images=[image], uptake_fraction=0.5)
    plain = calibrate.dice_table([prob], [truth])
    at = (0, list(calibrate.THRESHOLDS).index(0.5), 0)
    assert cut[at] == 1.0 and plain[at] == pytest.approx(2 * 16 / (36 + 16))
    with pytest.raises(ValueError, match="input image"):
        calibrate.dice_table([prob], [truth], uptake_fraction=0.5)


def test_cross_fitting_scores_each_image_with_a_setting_chosen_without_it():
    """Two images that want opposite thresholds: chosen on all, one setting serves both (in-sample 0.5 on
    average at best); cross-fitted, each image gets the other's setting and scores 0."""
    from eval import calibrate

    table = np.zeros((2, len(calibrate.THRESHOLDS), len(calibrate.MIN_SIZES)))
    table[0, 0, 0] = 1.0   # image 0 is perfect only at the lowest threshold
    table[1, -1, 0] = 1.0  # image 1 only at the highest
    _, _, in_sample = calibrate.best_setting(table)
    crossed = calibrate.cross_fit(table, 2)
    assert in_sample == 0.5 and crossed["dice"] == 0.0


def test_cross_fitting_chooses_the_checkpoint_inside_each_fold():
    """With a checkpoint axis the checkpoint is one more setting: in-sample the better checkpoint on average wins;
    cross-fitted (leave one out), each image is scored with the checkpoint the other three preferred."""
    from eval import calibrate

    table = np.zeros((4, 2, len(calibrate.THRESHOLDS), len(calibrate.MIN_SIZES)))
    table[:2, 1, 3, 2] = 1.0  # images 0 and 1 are perfect with checkpoint 1 at threshold 0.2, size 25
    table[2:, 0, 0, 0] = 0.9  # images 2 and 3 are good only with checkpoint 0
    index, dice = calibrate.best_cell(table)
    assert calibrate.describe(index) == {"checkpoint": 1, "threshold": 0.2, "min_component": 25} and dice == 0.5
    crossed = calibrate.cross_fit(table, 4)
    assert crossed["dice"] == 0.0 and sorted(s["checkpoint"] for s in crossed["settings"]) == [0, 0, 1, 1]


def test_calibration_over_several_checkpoints_writes_the_chosen_one(trained_tumor_tiny, tumor_root, tmp_path):
    """A checkpoint that predicts no tumor anywhere (output bias -50: x0 = -1) loses to the trained one even when
    listed first; the calibrated copy carries the winner's weights."""
    from diffusion.checkpoint import save_slim
    from eval import calibrate

    good = trained_tumor_tiny / "last.safetensors"
    state, config, meta = load_slim(good, expected_task="tumor")
    bad = tmp_path / "blind.safetensors"
    save_slim(bad, {**state, "conv_out.bias": torch.full_like(state["conv_out.bias"], -50.0)}, config, meta)
    out = tmp_path / "calibrated.safetensors"
    assert calibrate.main(["--checkpoint", str(bad), str(good), "--data-root", str(tumor_root), "--split", "all",
                           "--cross-fit", "3", "--out", str(out)]) == 0
    report = json.loads((tmp_path / "calibrated.safetensors.threshold.json").read_text())
    assert report["checkpoint"] == str(good) and report["per_checkpoint"][str(bad)]["dice"] == 0.0
    assert report["dice"] == report["per_checkpoint"][str(good)]["dice"] > 0
    assert torch.equal(load_slim(out)[0]["conv_out.bias"], state["conv_out.bias"])
    # each checkpoint cross-fitted on its own, and the good one's paired gain over the blind one listed first
    rows = report["cross_fit"]["per_checkpoint"]
    assert rows[str(bad)]["dice"] == 0.0 and rows[str(bad)]["vs_first"] == 0.0
    assert rows[str(good)]["vs_first"] == pytest.approx(rows[str(good)]["dice"]) and rows[str(good)]["dice"] > 0
    assert len(rows[str(good)]["scores"]) == report["images"]


def test_calibration_refuses_a_checkpoint_without_calibration_patients(trained_tumor_tiny, tumor_root, tmp_path):
    from diffusion.errors import UserError
    from eval import calibrate

    with pytest.raises(UserError, match="calib_patients"):
        calibrate.main(["--checkpoint", str(trained_tumor_tiny / "last.safetensors"), "--data-root", str(tumor_root),
                        "--split", "calib", "--out", str(tmp_path / "c.safetensors")])


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.6])
def test_every_cell_of_the_dice_table_is_what_the_submitted_mask_scores(fraction):
    """The sweep shares one component pass per threshold; each cell must still be the Dice of the mask `tumor_mask`
    submits at that setting (threshold, component filter, uptake cut). Components of exactly 10 and 25 pixels sit on
    the size grid's edges, touching blobs merge at low thresholds, an image with no tumor and one with no prediction
    are among the cases."""
    from diffusion.metrics import dice_score
    from diffusion.tasks.tumor.postprocess import tumor_mask
    from eval import calibrate

    rng = np.random.default_rng(0)
    probabilities, labels, images = [], [], []
    for case in range(6):
        prob = rng.random((40, 48)) * 0.3
        prob[2:4, 2:7] = 0.8                                                     # 10 px
        prob[10:15, 10:15] = rng.uniform(0.3, 0.95, (5, 5))                      # 25 px, mixed confidence
        prob[20:30, 20:34] = np.clip(rng.normal(0.6, 0.2, (10, 14)), 0, 1)      # a blob that breaks up as t rises
        prob[30:33, 34:36] = 0.45                                                # joins the blob at low thresholds
        truth = np.zeros((40, 48), np.uint8)
        truth[21:29, 22:33] = 1
        truth[10:13, 10:15] = case % 2
        image = rng.integers(0, 256, (40, 48), dtype=np.uint8)
        if case == 4:
            truth[:] = 0            # a patient image without tumor
        if case == 5:
            prob[:] = 0.0           # nothing predicted
        probabilities.append(prob)
        labels.append(truth)
        images.append(image)
    table = calibrate.dice_table(probabilities, labels, images=images, uptake_fraction=fraction)
    for i, (prob, truth, image) in enumerate(zip(probabilities, labels, images)):
        for j, t in enumerate(calibrate.THRESHOLDS):
            for k, m in enumerate(calibrate.MIN_SIZES):
                sample = {"threshold": float(t), "min_component": m, "uptake_fraction": fraction}
                assert table[i, j, k] == dice_score(tumor_mask(prob, sample, image), truth), (i, t, m)
