"""Tumor segmentation: data validation, padding, the condition, ensembles and output format, training, infer."""
import copy
import json

import numpy as np
import pytest
import torch

import infer
from diffusion.checkpoint import load_slim
from diffusion.data.images import read_png, write_png
from diffusion.data.tumor import (
    TumorTrainDataset,
    crop_back,
    load_tumor_cases,
    pad_to_multiple,
)
from diffusion.errors import DataError
from diffusion.inference import Predictor
from diffusion.metrics import dice_score
from diffusion.tasks import get_task
from tests.conftest import REPO


def test_loads_patients_and_controls(tumor_root):
    cases = load_tumor_cases(tumor_root / "tumor-segmentation", include_controls=True, progress=False)
    assert cases.ids[:3] == ["patient_000", "patient_001", "patient_002"] and len(cases) == 5
    assert all(img.shape[1] == 400 for img in cases.images)
    assert cases.labels[0].max() == 1 and cases.labels[4].max() == 0 and cases.is_control == [False] * 3 + [True] * 2
    assert len(load_tumor_cases(tumor_root / "tumor-segmentation", progress=False)) == 3


@pytest.mark.parametrize("breakage, message", [
    ("shape", "differs from its image"),
    ("values", "only \\[0, 255\\]"),
    ("channels", "channels must be identical"),
    ("corrupt", "not a readable image"),
    ("missing", "file is missing"),
])
def test_label_validation_names_the_file(tumor_root, breakage, message):
    label = tumor_root / "tumor-segmentation" / "patients" / "labels" / "segmentation_001.png"
    if breakage == "shape":
        write_png(label, np.zeros((100, 400, 3), np.uint8))
    elif breakage == "values":
        write_png(label, np.full((read_png(label).shape[0], 400, 3), 7, np.uint8))
    elif breakage == "channels":
        rgb = read_png(label, grey=False).copy()
        rgb[0, 0] = (255, 0, 0)
        write_png(label, rgb)
    elif breakage == "corrupt":
        label.write_bytes(b"junk")
    else:
        label.unlink()
    with pytest.raises(DataError) as info:
        load_tumor_cases(tumor_root / "tumor-segmentation", progress=False)
    assert str(label) in str(info.value) and info.match(message)


def test_pad_and_crop_back_round_trip_for_every_height():
    rng = np.random.default_rng(0)
    for height in range(300, 992):
        image = rng.integers(0, 256, (height, 400), dtype=np.uint8)
        padded = pad_to_multiple(image, 8, 255)
        assert padded.shape[0] % 8 == 0 and padded.shape[1] % 8 == 0 and padded.shape[0] - height < 8
        assert np.array_equal(crop_back(padded, image.shape), image)


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


def test_tumor_crops_contain_tumor_more_often(tumor_root):
    cases = load_tumor_cases(tumor_root / "tumor-segmentation", progress=False)
    biased = TumorTrainDataset(cases, crop_size=64, tumor_crop_prob=1.0)
    uniform = TumorTrainDataset(cases, crop_size=64, tumor_crop_prob=0.0)
    hits = lambda ds: sum(ds[i % 3]["label"].max().item() for i in range(30) for _ in [ds.set_epoch(i)])
    assert hits(biased) == 30 and hits(uniform) < 30
    item = biased[0]
    assert item["image"].shape == (64, 64) and set(item["label"].unique().tolist()) <= {0, 1}


def test_intensity_augment_keeps_blank_blank_and_the_uptake_order():
    from diffusion.data.tumor import intensity_augment

    image = np.arange(256, dtype=np.uint8)[::-1].reshape(16, 16)  # 255 (no uptake) ... 0 (the most)
    assert np.array_equal(intensity_augment(image, np.random.default_rng(0), 0.0), image)
    changed = 0
    for seed in range(20):
        out = intensity_augment(image, np.random.default_rng(seed), 0.3)
        assert out.dtype == np.uint8 and out.flat[0] == 255          # blank stays blank
        assert np.all(np.diff(out.astype(int).ravel()) <= 0)        # more uptake never looks like less
        changed += not np.array_equal(out, image)
    assert changed == 20


def test_intensity_aug_jitters_only_the_image_and_leaves_every_other_draw_as_it_was(tumor_root):
    cases = load_tumor_cases(tumor_root / "tumor-segmentation", progress=False)
    plain = TumorTrainDataset(cases, crop_size=64, tumor_crop_prob=0.5, seed=3)
    jittered = TumorTrainDataset(cases, crop_size=64, tumor_crop_prob=0.5, seed=3, intensity_aug=0.3)
    differs = 0
    for key in [(e, i) for e in range(4) for i in range(len(cases))]:
        a, b = plain[key], jittered[key]
        assert torch.equal(a["label"], b["label"]) and torch.equal(a["row0"], b["row0"])  # same crop, same flip
        assert torch.equal(b["image"], jittered[key]["image"])  # deterministic in (seed, epoch, index)
        differs += not torch.equal(a["image"], b["image"])
    assert differs > 0
    with pytest.raises(ValueError, match="intensity_aug"):
        TumorTrainDataset(cases, intensity_aug=1.5)


def test_control_fraction_sets_the_share_of_control_items(tumor_root):
    cases = load_tumor_cases(tumor_root / "tumor-segmentation", include_controls=True, progress=False)
    assert sum(cases.is_control) == 2 and len(cases) == 5

    def hits(ds):  # per item of 4 epochs: does its crop hold tumor?
        out = []
        for epoch in range(4):
            ds.set_epoch(epoch)
            out += [ds[i]["label"].max().item() for i in range(len(ds))]
        return out

    only_patients = TumorTrainDataset(cases, crop_size=64, tumor_crop_prob=1.0, control_fraction=0.0)
    only_controls = TumorTrainDataset(cases, crop_size=64, tumor_crop_prob=1.0, control_fraction=1.0)
    natural = TumorTrainDataset(cases, crop_size=64, tumor_crop_prob=1.0)
    assert all(hits(only_patients)) and not any(hits(only_controls))
    assert sum(hits(natural)) == 3 * 4  # every image once per epoch: the 3 patients' crops hold tumor
    with pytest.raises(ValueError, match="control_fraction"):
        TumorTrainDataset(cases, control_fraction=1.5)


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
    _, config, extra = load_slim(out, expected_task="tumor")
    report = json.loads((tmp_path / "calibrated.safetensors.threshold.json").read_text())
    assert config["sample"]["threshold"] == report["threshold"] and extra["threshold_images"] == 3
    assert config["sample"]["min_component"] == report["min_component"]
    assert report["dice"] == max(report["sweep"].values())
    assert 0 <= report["cross_fit"]["dice"] <= report["dice"] and len(report["cross_fit"]["settings"]) == 3


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
    state, config, extra = load_slim(good, expected_task="tumor")
    bad = tmp_path / "blind.safetensors"
    save_slim(bad, {**state, "conv_out.bias": torch.full_like(state["conv_out.bias"], -50.0)}, config, extra)
    out = tmp_path / "calibrated.safetensors"
    assert calibrate.main(["--checkpoint", str(bad), str(good), "--data-root", str(tumor_root), "--split", "all",
                           "--cross-fit", "3", "--out", str(out)]) == 0
    report = json.loads((tmp_path / "calibrated.safetensors.threshold.json").read_text())
    assert report["checkpoint"] == str(good) and report["per_checkpoint"][str(bad)]["dice"] == 0.0
    assert report["dice"] == report["per_checkpoint"][str(good)]["dice"] > 0
    assert torch.equal(load_slim(out)[0]["conv_out.bias"], state["conv_out.bias"])


def test_calibration_refuses_a_checkpoint_without_calibration_patients(trained_tumor_tiny, tumor_root, tmp_path):
    from diffusion.errors import UserError
    from eval import calibrate

    with pytest.raises(UserError, match="calib_patients"):
        calibrate.main(["--checkpoint", str(trained_tumor_tiny / "last.safetensors"), "--data-root", str(tumor_root),
                        "--split", "calib", "--out", str(tmp_path / "c.safetensors")])


def test_the_calibration_split_never_holds_a_reported_or_trained_patient():
    from diffusion.data.split import split_cases
    from diffusion.tasks import Case

    cases = [Case(f"patient_{i:03d}", f"patient_{i:03d}") for i in range(120)]
    cases += [Case(f"control_{i:03d}", f"control_{i:03d}", extra=True) for i in range(10)]
    sides = {w: {c.id for c in split_cases(cases, 30, 0, w, calib_patients=20)} for w in ("train", "val", "calib")}
    assert len(sides["val"]) == 30 and len(sides["calib"]) == 20 and len(sides["train"]) == 70 + 10
    assert not sides["calib"] & sides["val"] and not sides["calib"] & sides["train"]
    assert not sides["val"] & sides["train"]
    assert all(i.startswith("patient") for i in sides["calib"] | sides["val"])
    assert sides["train"] | sides["val"] | sides["calib"] == {c.id for c in cases}
    # the validation patients do not move when calibration patients are carved out
    assert sides["val"] == {c.id for c in split_cases(cases, 30, 0, "val")}


def test_component_filter_drops_only_small_components():
    from diffusion.tasks.tumor import remove_small_components

    mask = np.zeros((40, 40), np.uint8)
    mask[2:4, 2:4] = 255        # 4 pixels
    mask[10:20, 10:20] = 255    # 100 pixels
    mask[30, 30] = 255          # 1 pixel
    mask[31, 31] = 255          # touches it diagonally: one 2-pixel component (8-connectivity)
    out = remove_small_components(mask, 5)
    assert out.dtype == mask.dtype and out[10:20, 10:20].all() and out.sum() == 100 * 255
    assert np.array_equal(remove_small_components(mask, 2), mask)  # the diagonal pair is one component
    assert np.array_equal(remove_small_components(mask, 0), mask)


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


def test_with_calibration_patients_training_watches_them_not_the_reported_patients(tumor_root):
    """best.safetensors is chosen by in-training validation: with data.calib_patients it runs on the calibration
    patients, which are neither trained on nor among the validation patients."""
    from diffusion.config import apply_overrides, load_config
    from diffusion.data.split import split_cases
    from diffusion.training import load_training_data
    from tests.conftest import REPO

    config = apply_overrides(load_config(REPO / "configs" / "tumor_tiny.yaml"), ["data.calib_patients=1"])
    task = get_task("tumor", config["data"])
    train_set, root, watched, _, summary = load_training_data(task, config, tumor_root, progress=False)
    cases = task.list_cases(root, include_extra=True)
    val = {c.id for c in split_cases(cases, 1, 0, "val", 1)}
    trained = {c.id for c in split_cases(cases, 1, 0, "train", 1)}
    assert len(watched) == 1 and not {c.id for c in watched} & (val | trained)
    assert len(train_set) == len(trained) == 3 and "calib" in summary


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
    root, _ = task.resolve_root(tumor_root)
    image = task.read_case(root, task.list_cases(root)[0], False).inputs["image"]
    both = segmenter.predict_one({"image": image}, ensemble=2)
    single = segmenter.with_sample(flip=False)
    plain = single.predict_one({"image": image}, ensemble=1).probability
    mirrored = single.predict_one({"image": np.ascontiguousarray(image[:, ::-1])}, ensemble=1).probability[:, ::-1]
    assert np.abs(plain - mirrored).max() > 1e-3  # the untrained net is not mirror-symmetric: the test can tell
    np.testing.assert_allclose(both.probability, (plain + mirrored) / 2, atol=2e-2)
    assert both.uncertainty.max() > 0 and single.predict_one({"image": image}, ensemble=1).uncertainty.max() == 0
