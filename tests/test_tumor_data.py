"""Tumor training data (issue #27): synthetic tumors pasted into healthy controls, the K-fold split by patient, and
the geometric augmentation."""
import cv2
import numpy as np
import pytest

from diffusion.data.split import fold_patients, split_by_config
from diffusion.data.synthetic import make_pet_case
from diffusion.data.synthetic_tumors import body_mask, paste_tumors, resized, tumor_patches
from diffusion.data.tumor import TumorCases, TumorTrainDataset
from diffusion.tasks import Case


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
