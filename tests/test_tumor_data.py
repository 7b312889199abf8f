"""Tumor data: reading and validation, padding, the training crops and their levers (uptake jitter, controls, synthetic
tumors pasted into healthy controls, zoom and rotation), and the patient splits (calibration, K folds)."""

import cv2
import numpy as np
import pytest
import torch

from diffusion.data.images import crop_back, pad_to_multiple, read_png, write_png
from diffusion.data.split import fold_patients, split_by_config
from diffusion.data.synthetic import make_pet_case
from diffusion.errors import DataError
from diffusion.tasks import Case, get_task
from diffusion.tasks.tumor.dataset import TumorTrainDataset, intensity_augment
from diffusion.tasks.tumor.layout import TumorCases, load_tumor_cases
from diffusion.tasks.tumor.synthetic_tumors import body_mask, paste_tumors, resized, tumor_patches
from tests.conftest import REPO


def cases(patients: int = 3, controls: int = 2, seed: int = 0) -> TumorCases:
    rng = np.random.default_rng(seed)
    ids, images, labels, control = [], [], [], []
    for p in range(patients + controls):
        image, label = make_pet_case(rng, 400, tumors=0 if p >= patients else 2)
        ids.append(f"patient_{p:03d}" if p < patients else f"control_{p:03d}")
        images.append(image[..., 0])
        labels.append((label[..., 0] > 0).astype(np.uint8))
        control.append(p >= patients)
    return TumorCases(ids, images, labels, control)


def test_tumor_patches_are_the_connected_components_of_the_labels():
    data = cases(patients=2, controls=0)
    patches = tumor_patches(data.ids, data.images, data.labels)
    count = sum(cv2.connectedComponents(lab)[0] - 1 for lab in data.labels)
    assert len(patches) == count and {p.source for p in patches} == set(data.ids)
    for p in patches:
        assert p.mask.shape == p.uptake.shape and p.mask.max() == 1 and 0 < p.center[0] < 1


@pytest.mark.parametrize("seed", range(8))
def test_a_pasted_tumor_lands_inside_the_body_and_its_label_is_the_pasted_region(seed):
    data = cases()
    patches = tumor_patches(data.ids[:3], data.images[:3], data.labels[:3])
    control = np.full((400, 400), 255, np.uint8)  # a narrow body: many placements near the donors' spots miss it
    cv2.ellipse(control, (200, 200), (25, 170), 0, 0, 360, 200, -1)
    image, label, placements = paste_tumors(control, patches, np.random.default_rng(seed), max_tumors=3)
    assert placements, "nothing was pasted"
    body = body_mask(control)
    assert label.sum() > 0 and np.all(body[label > 0] == 1)  # only inside the control's body
    expected, boxes = np.zeros_like(label), np.zeros_like(label, bool)
    for p in placements:
        _, mask = resized(patches[p["patch"]], p["scale"])
        expected[p["y"]:p["y"] + mask.shape[0], p["x"]:p["x"] + mask.shape[1]] |= mask
        boxes[p["y"]:p["y"] + mask.shape[0], p["x"]:p["x"] + mask.shape[1]] = True
    assert np.array_equal(label, expected)  # the label is exactly the pasted components
    assert not np.any((image != control) & ~boxes)  # nothing changes outside the pasted patches
    assert np.all(image[label > 0] <= control[label > 0])  # uptake added as a maximum (darker or equal)


def test_synthetic_items_are_deterministic_and_from_training_patients_only():
    data = cases()
    dataset = TumorTrainDataset(data, crop_size=64, synthetic_fraction=1.0, tumor_crop_prob=1.0)
    a, b = dataset[(3, 5)], dataset[(3, 5)]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["label"].sum() > 0  # the crop centred on a pasted tumor
    assert {p.source for p in dataset.patches} <= {i for i, c in zip(data.ids, data.is_control) if not c}


def test_with_the_levers_off_the_items_are_what_they_were():
    """A dataset built with synthetic tumors, zoom and rotation off draws exactly as before the levers existed."""
    data = cases()
    plain = TumorTrainDataset(data, crop_size=64, seed=3)
    off = TumorTrainDataset(data, crop_size=64, seed=3, synthetic_fraction=0.0, zoom=0.0, rotate=0.0)
    for key in [(0, i) for i in range(len(data))]:
        assert all(np.array_equal(plain[key][k], off[key][k]) for k in ("image", "label", "row0"))


def test_zoom_and_rotation_keep_image_and_label_aligned():
    """A generated image whose label is known (dark squares = tumor): after the warp, the label still marks the
    dark pixels."""
    image = np.full((300, 400), 255, np.uint8)
    label = np.zeros((300, 400), np.uint8)
    for y, x in [(60, 80), (150, 200), (200, 300), (100, 320)]:
        image[y:y + 30, x:x + 30] = 0
        label[y:y + 30, x:x + 30] = 1
    data = TumorCases(["patient_000"], [image], [label], [False])
    dataset = TumorTrainDataset(data, crop_size=160, crop_width=200, tumor_crop_prob=1.0, zoom=0.25, rotate=20,
                                flip=True)
    for i in range(20):
        item = dataset[(i, 0)]
        img, lab = item["image"].numpy(), item["label"].numpy()
        assert img.shape == lab.shape == (160, 200) and set(np.unique(lab)) <= {0, 1}
        dark = img < 128
        if lab.sum() == 0:
            continue
        agree = (dark == (lab > 0)).mean()
        assert agree > 0.98, (i, agree)
        assert (dark & (lab > 0)).sum() > 0.8 * (lab > 0).sum()


def test_folds_are_by_patient_disjoint_and_cover_every_patient_once():
    patients = [f"patient_{i:03d}" for i in range(23)]
    held = []
    for k in range(5):
        train, val = fold_patients(patients, 5, k, seed=0)
        assert not train & val and train | val == set(patients)
        held.append(val)
    assert sorted(p for v in held for p in v) == sorted(patients)  # each patient validated exactly once
    assert {len(v) for v in held} <= {4, 5}


def test_nested_folds_split_the_outer_training_patients_and_never_touch_the_outer_validation():
    """data.inner_folds: inside outer fold 2, the five inner folds deal its training patients once each into the
    calibration side; each inner model trains on the rest (and the controls), never on the outer validation
    patients, so the joined inner models still have them held out."""
    from diffusion.config import DEFAULTS, check_config, deep_update
    from diffusion.errors import UserError

    cases = [Case(f"patient_{i:03d}_0", f"patient_{i:03d}") for i in range(40)]
    cases += [Case(f"control_{i:03d}", f"control_{i:03d}", extra=True) for i in range(3)]
    outer = {"val_patients": 53, "split_seed": 0, "calib_patients": 0, "folds": 5, "fold": 2}
    side = lambda config, which: {c.patient for c in split_by_config(cases, config, which)}
    outer_train, outer_val = side(outer, "train") - {f"control_{i:03d}" for i in range(3)}, side(outer, "val")
    held = []
    for j in range(5):
        inner = {**outer, "inner_folds": 5, "inner_fold": j}
        train, val, calib = side(inner, "train"), side(inner, "val"), side(inner, "calib")
        assert val == outer_val and not train & outer_val and not train & calib
        assert calib <= outer_train and (train - {f"control_{i:03d}" for i in range(3)}) | calib == outer_train
        assert {f"control_{i:03d}" for i in range(3)} <= train
        held.append(calib)
    assert sorted(p for c in held for p in c) == sorted(outer_train)  # each training patient held out once
    assert side({**outer, "inner_folds": 0}, "calib") == set()  # off: the outer split as before
    for bad in ({"inner_folds": 5, "inner_fold": 5}, {"inner_folds": 1}, {"inner_folds": 5, "calib_patients": 3},
                {"inner_folds": 5, "folds": 0}):
        with pytest.raises(UserError, match="nested folds"):
            check_config(deep_update(DEFAULTS, {"task": "tumor", "data": {"folds": 5, **bad}}))


def test_a_fold_model_is_never_scored_on_its_own_training_patients():
    all_cases = [Case(f"patient_{i:03d}_{s}", f"patient_{i:03d}") for i in range(30) for s in range(2)]
    all_cases += [Case(f"control_{i:03d}", f"control_{i:03d}", extra=True) for i in range(4)]
    for k in range(5):
        config = {"val_patients": 53, "split_seed": 0, "calib_patients": 3, "folds": 5, "fold": k}
        train = {c.patient for c in split_by_config(all_cases, config, "train")}
        val = {c.patient for c in split_by_config(all_cases, config, "val")}
        calib = {c.patient for c in split_by_config(all_cases, config, "calib")}
        assert not (train & val) and not (train & calib) and not (val & calib)
        assert len(val) == 6 and len(calib) == 3 and all(p.startswith("control") for p in train - {
            c.patient for c in all_cases if not c.extra})


def test_loads_patients_and_controls(tumor_root):
    cases = load_tumor_cases(tumor_root / "tumor-segmentation", include_controls=True, progress=False)
    assert cases.ids[:3] == ["patient_000", "patient_001", "patient_002"] and len(cases) == 5
    assert all(img.shape[1] == 400 for img in cases.images)
    assert cases.labels[0].max() == 1 and cases.labels[4].max() == 0 and cases.is_control == [False] * 3 + [True] * 2
    assert len(load_tumor_cases(tumor_root / "tumor-segmentation", progress=False)) == 3


@pytest.mark.parametrize("breakage, message", [
    ("shape", "differs from its image"),
    ("values", "only 0 and 255, found \\[7\\]"),
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


def test_tumor_crops_contain_tumor_more_often(tumor_root):
    cases = load_tumor_cases(tumor_root / "tumor-segmentation", progress=False)
    biased = TumorTrainDataset(cases, crop_size=64, tumor_crop_prob=1.0)
    uniform = TumorTrainDataset(cases, crop_size=64, tumor_crop_prob=0.0)
    hits = lambda ds: sum(ds[i % 3]["label"].max().item() for i in range(30) for _ in [ds.set_epoch(i)])
    assert hits(biased) == 30 and hits(uniform) < 30
    item = biased[0]
    assert item["image"].shape == (64, 64) and set(item["label"].unique().tolist()) <= {0, 1}


def test_intensity_augment_keeps_blank_blank_and_the_uptake_order():

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


def test_with_calibration_patients_training_watches_them_not_the_reported_patients(tumor_root):
    """best.safetensors is chosen by in-training validation: with data.calib_patients it runs on the calibration
    patients, which are neither trained on nor among the validation patients."""
    from diffusion.config import apply_overrides, load_config
    from diffusion.data.split import split_cases
    from diffusion.training import load_training_data

    config = apply_overrides(load_config(REPO / "configs" / "tumor_tiny.yaml"), ["data.calib_patients=1"])
    task = get_task("tumor", config["data"])
    train_set, root, watched, _, summary = load_training_data(task, config, tumor_root, progress=False)
    cases = task.layout.list_cases(root, include_extra=True)
    val = {c.id for c in split_cases(cases, 1, 0, "val", 1)}
    trained = {c.id for c in split_cases(cases, 1, 0, "train", 1)}
    assert len(watched) == 1 and not {c.id for c in watched} & (val | trained)
    assert len(train_set) == len(trained) == 3 and "calib" in summary

