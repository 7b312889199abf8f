"""Tumor segmentation: the condition, the predictor's ensembles and output format, training, infer and the
ablation harness."""
import copy
import json

import numpy as np
import pytest
import torch

import infer
from diffusion.checkpoint import load_slim
from diffusion.data.images import read_png
from diffusion.inference import Predictor
from diffusion.metrics import dice_score
from diffusion.tasks import get_task
from tests.conftest import REPO


def test_condition_channels_and_training_target():
    task = get_task("tumor")
    image = torch.tensor([[[255, 0], [128, 255]]], dtype=torch.uint8)
    cond = task.condition(image, torch.tensor([0]))
    assert cond.shape == (1, 2, 2, 2)
    assert cond[0, 0, 0, 0] == -1.0 and cond[0, 0, 0, 1] == 1.0        # white = no uptake, black = high uptake
    assert cond[0, 1, 0, 0] == -1.0 and cond[0, 1, 1, 0] > cond[0, 1, 0, 0]  # position grows downwards
    batch = {"image": image, "label": torch.tensor([[[1, 0], [0, 0]]], dtype=torch.uint8), "row0": torch.tensor([5])}
    target, cond, labels, weight = task.training_batch(batch)
    assert target.tolist() == [[[[1.0, -1.0], [-1.0, -1.0]]]] and labels is None and weight.shape == target.shape
    assert cond[0, 1, 0, 0] > -1.0  # the crop's first row is row 5 of the image


def test_position_channel_option_reaches_the_condition_and_the_predictor(trained_tumor_tiny):
    """data.position_channel: false zeroes the position channel in training (the task of the run's config) and at
    inference (the task of the checkpoint's config), and changes nothing else."""
    image = torch.full((1, 4, 3), 100, dtype=torch.uint8)
    on = get_task("tumor").condition(image, torch.tensor([7]))
    off = get_task("tumor", {"position_channel": False}).condition(image, torch.tensor([7]))
    assert torch.equal(on[:, 0], off[:, 0]) and off[:, 1].abs().max() == 0 and on[:, 1].abs().min() > 0
    seg = Predictor.from_checkpoint(trained_tumor_tiny / "last.safetensors")
    config = copy.deepcopy(seg.config)
    config["data"]["position_channel"] = False
    seg_off = Predictor(seg.denoiser, config)
    assert seg.task.position_channel and not seg_off.task.position_channel
    pet = np.full((96, 400), 200, np.uint8)
    pet[40:50, 100:120] = 20
    a = seg.predict_one({"image": pet}, ensemble=1).probability
    b = seg_off.predict_one({"image": pet}, ensemble=1).probability
    assert np.abs(a - b).max() > 1e-4  # same weights and noise: only the position channel differs


def test_dice_formula():
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    assert dice_score(a, b) == 1.0
    a[0, :2] = 255
    b[0, 1:3] = 255
    assert dice_score(a, b) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))


def test_prediction_format_and_ensemble_reduction(trained_tumor_tiny):
    seg = Predictor.from_checkpoint(trained_tumor_tiny / "last.safetensors")
    image = np.full((333, 400), 230, np.uint8)
    pred = seg.predict_one({"image": image}, ensemble=3)
    assert pred.image.shape == image.shape and set(np.unique(pred.image)) <= {0, 255}
    assert pred.probability.shape == image.shape and 0 <= pred.probability.min() <= pred.probability.max() <= 1
    assert np.array_equal(pred.image > 0, pred.probability > seg.config["sample"]["threshold"])
    assert pred.uncertainty.shape == image.shape and pred.uncertainty.max() > 0  # three different samples


def test_two_training_steps_write_dice(trained_tumor_tiny):
    rows = [json.loads(x) for x in (trained_tumor_tiny / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert all(0 <= r["val_dice"] <= 1 for r in rows if "val_dice" in r) and any("val_dice" in r for r in rows)
    _, config, _ = load_slim(trained_tumor_tiny / "best.safetensors", expected_task="tumor")
    assert config["task"] == "tumor"


def test_infer_tumor_end_to_end(trained_tumor_tiny, tumor_root, tmp_path):
    out = tmp_path / "out"
    assert infer.main(["--task", "tumor", "--data-root", str(tumor_root), "--checkpoint",
                       str(trained_tumor_tiny / "last.safetensors"), "--out", str(out), "--ensemble", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "tumor" and metrics["n"] == 3 and 0 <= metrics["dice"] <= 1
    assert set(metrics["seconds_per_image"]) == {"mean", "median", "p95", "max"}
    assert (out / "overview.png").is_file()
    for case in metrics["cases"]:
        pred = read_png(out / "predictions" / f"segmentation_{case['id'].split('_')[1]}.png", grey=False)
        source = read_png(tumor_root / "tumor-segmentation" / "patients" / "imgs" / f"{case['id']}.png", grey=False)
        assert pred.shape == source.shape and set(np.unique(pred)) <= {0, 255}
        assert np.array_equal(pred[..., 0], pred[..., 1]) and np.array_equal(pred[..., 0], pred[..., 2])
    assert infer.main(["--task", "tumor", "--data-root", str(tumor_root), "--checkpoint",
                       str(trained_tumor_tiny / "last.safetensors"), "--out", str(tmp_path / "c"),
                       "--include-controls"]) == 0
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["n"] == 5


def test_component_filter_drops_only_small_components():
    from diffusion.tasks.tumor.postprocess import remove_small_components

    mask = np.zeros((40, 40), np.uint8)
    mask[2:4, 2:4] = 255        # 4 pixels
    mask[10:20, 10:20] = 255    # 100 pixels
    mask[30, 30] = 255          # 1 pixel
    mask[31, 31] = 255          # touches it diagonally: one 2-pixel component (8-connectivity)
    out = remove_small_components(mask, 5)
    assert out.dtype == mask.dtype and out[10:20, 10:20].all() and out.sum() == 100 * 255
    assert np.array_equal(remove_small_components(mask, 2), mask)  # the diagonal pair is one component
    assert np.array_equal(remove_small_components(mask, 0), mask)


def test_the_uptake_cut_keeps_in_each_component_the_pixels_of_its_own_peak_share():
    """Two components: A peaks at uptake 200 (pixels 200, 100, 50), B at 60 (pixels 60, 20). Cut at 0.3 of each
    one's own peak, A loses its 50 (< 60) and B keeps its 20 (>= 18); a cut at the image's peak would drop B's 20,
    one that read the PNG's grey value as uptake (dark is high uptake) would keep A's 50 and drop its 200."""
    import torch

    from diffusion.tasks import get_task
    from diffusion.tasks.tumor.postprocess import tumor_mask, uptake_cut

    image = np.full((10, 20), 255, np.uint8)      # background: no uptake
    mask = np.zeros((10, 20), np.uint8)
    for col, uptake in ((1, 200), (2, 100), (3, 50), (11, 60), (12, 20)):
        image[4, col] = 255 - uptake
        mask[4, col] = 255
    out = uptake_cut(mask, image, 0.3)
    assert out.dtype == mask.dtype
    assert [int(out[4, c] > 0) for c in (1, 2, 3, 11, 12)] == [1, 1, 0, 1, 1]
    assert np.array_equal(uptake_cut(mask, image, 0.0), mask)
    # the whole post-processing: threshold, components, cut; the task's decode gives it the input image
    probability = (mask > 0) * 0.9
    sample = {"threshold": 0.5, "min_component": 0, "uptake_fraction": 0.3}
    assert np.array_equal(tumor_mask(probability, sample, image), out)
    with pytest.raises(ValueError, match="needs the input image"):
        tumor_mask(probability, sample)
    x0 = torch.from_numpy(probability * 2 - 1).float()[None, None]
    assert np.array_equal(get_task("tumor").decode(x0, {"image": image}, sample).image, out)


def test_ablation_harness_scores_tumor_by_dice(trained_tumor_tiny, tumor_root, tmp_path):
    import csv

    from eval import ablate

    assert ablate.main(["--task", "tumor", "--data-root", str(tumor_root), "--checkpoint",
                        str(trained_tumor_tiny / "last.safetensors"), "--samplers", "ddim:1,ddim:2",
                        "--ensemble", "1,3", "--split", "all", "--models", "", "--out", str(tmp_path / "abl")]) == 0
    with open(tmp_path / "abl" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["sampler", "steps", "nfe", "ensemble", "dice", "seconds_per_image"]
    assert [(r["sampler"], r["nfe"], r["ensemble"]) for r in rows] == [
        ("ddim:1", "1", "1"), ("ddim:1", "1", "3"), ("ddim:2", "2", "1"), ("ddim:2", "2", "3")]
    assert all(0 <= float(r["dice"]) <= 1 and float(r["seconds_per_image"]) > 0 for r in rows)


def test_every_config_loads_and_the_warm_start_recipes_fit_their_source():
    """Every shipped config passes the key check; a config documented as `--init` from another run has the same
    model section as that run's config (else --init is refused) and keeps its split and calibration patients."""
    from diffusion.config import load_config

    configs = {p.name: load_config(p) for p in sorted((REPO / "configs").glob("*.yaml"))}
    assert len(configs) >= 10
    segmenter, warm = configs["tumor_segmenter_cpu.yaml"], configs["tumor_diffusion_warm_cpu.yaml"]
    assert warm["model"] == segmenter["model"]
    assert {k: warm["data"][k] for k in ("val_patients", "split_seed", "calib_patients")} == \
        {k: segmenter["data"][k] for k in ("val_patients", "split_seed", "calib_patients")}
    assert (segmenter["diffusion"]["objective"], warm["diffusion"]["objective"]) == ("regress", "diffusion")
    assert warm["diffusion"]["loss"] == "bce_dice" and warm["sample"]["sampler"] == "ddim"


def test_deterministic_segmenter_with_flip_averages_the_image_and_its_mirror(tumor_root, tmp_path):
    """The recipe of configs/tumor_segmenter_cpu.yaml on the tiny net: tumor logits (bce_dice), the regressor
    sampler, 2 members with flip: the probability is the mean of the prediction on the image and the mirrored
    prediction on the mirrored image, and their disagreement is the uncertainty."""
    import train_diffusion

    run = tmp_path / "seg"
    assert train_diffusion.main(["--config", str(REPO / "configs" / "tumor_tiny.yaml"), "--out", str(run),
                                 "--data-root", str(tumor_root), "--max-steps", "1",
                                 "--set", "diffusion.objective=regress", "--set", "diffusion.loss=bce_dice",
                                 "--set", "sample.sampler=regressor", "--set", "sample.steps=1",
                                 "--set", "sample.flip=true"]) == 0
    segmenter = Predictor.from_checkpoint(run / "last.safetensors")
    task = get_task("tumor")
    root, _ = task.layout.resolve_root(tumor_root)
    image = task.layout.read_case(root, task.layout.list_cases(root)[0], False).inputs["image"]
    both = segmenter.predict_one({"image": image}, ensemble=2)
    single = segmenter.with_sample(flip=False)
    plain = single.predict_one({"image": image}, ensemble=1).probability
    mirrored = single.predict_one({"image": np.ascontiguousarray(image[:, ::-1])}, ensemble=1).probability[:, ::-1]
    assert np.abs(plain - mirrored).max() > 1e-3  # the untrained net is not mirror-symmetric: the test can tell
    np.testing.assert_allclose(both.probability, (plain + mirrored) / 2, atol=2e-2)
    assert both.uncertainty.max() > 0 and single.predict_one({"image": image}, ensemble=1).uncertainty.max() == 0

