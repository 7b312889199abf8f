
import numpy as np
import pytest

from diffusion.data import random_mask, split_indices, split_patients
from diffusion.data.images import write_png
from diffusion.errors import DataError
from diffusion.tasks import get_task
from diffusion.tasks.ct.dataset import CTTrainDataset
from diffusion.tasks.ct.layout import load_ct_slices


def test_loads_generated_layout(ct_root):
    root, where = get_task("ct").layout.resolve_root(ct_root)
    slices = load_ct_slices(root, progress=False)
    assert len(slices) == 8 and slices.ids[0] == "000_0"
    assert slices.corrupted.shape == (8, 256, 256) and slices.ct.dtype == np.uint8
    assert set(np.unique(slices.missing_mask)) <= {0, 1}
    assert np.all(slices.corrupted[slices.missing_mask == 1] == 0)
    assert str(root) in where


def test_task_folder_itself_is_a_valid_root(ct_root):
    root, _ = get_task("ct").layout.resolve_root(ct_root / "ct-inpainting")
    assert root.name == "ct-inpainting"


def test_missing_data_root_is_named(tmp_path):
    with pytest.raises(DataError, match="does-not-exist"):
        get_task("ct").layout.resolve_root(tmp_path / "does-not-exist")


def test_no_data_root_anywhere_says_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DMIAI_DATA", raising=False)
    with pytest.raises(DataError, match="no data root found.*--data-root"):
        get_task("ct").layout.resolve_root(None)


def test_env_var_is_used(ct_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DMIAI_DATA", str(ct_root))
    root, where = get_task("ct").layout.resolve_root(None)
    assert "DMIAI_DATA" in where and root.name == "ct-inpainting"


@pytest.mark.parametrize("breakage, message", [
    ("missing", "file is missing"),
    ("corrupt", "not a readable image"),
    ("size", "expected 256x256"),
    ("mask_values", "only 0 and 255, found \\[7\\]"),
    ("tissue_values", "only 0, 100 and 255, found \\[50\\]"),
    ("vertebra_text", "must be an integer"),
    ("vertebra_range", "out of range"),
])
def test_validation_errors_name_the_file(ct_root, breakage, message):
    task = ct_root / "ct-inpainting"
    target = {
        "missing": task / "tissue" / "tissue_001_1.png",
        "corrupt": task / "mask" / "mask_001_1.png",
        "size": task / "corrupted" / "corrupted_001_1.png",
        "mask_values": task / "mask" / "mask_001_1.png",
        "tissue_values": task / "tissue" / "tissue_001_1.png",
        "vertebra_text": task / "vertebrae" / "vertebrae_001_1.txt",
        "vertebra_range": task / "vertebrae" / "vertebrae_001_1.txt",
    }[breakage]
    if breakage == "missing":
        target.unlink()
    elif breakage == "corrupt":
        target.write_bytes(b"\x89PNG not really")
    elif breakage == "size":
        write_png(target, np.zeros((128, 256), np.uint8))
    elif breakage == "mask_values":
        write_png(target, np.full((256, 256), 7, np.uint8))
    elif breakage == "tissue_values":
        write_png(target, np.full((256, 256), 50, np.uint8))
    elif breakage == "vertebra_text":
        target.write_text("L3")
    else:
        target.write_text("99")
    with pytest.raises(DataError) as info:
        load_ct_slices(task, progress=False)
    assert str(target) in str(info.value)
    assert info.match(message)


def test_split_is_by_patient_and_deterministic():
    patients = [f"{p:03d}" for p in range(20) for _ in range(10)]
    train, val = split_patients(patients, 5, seed=3)
    assert len(val) == 5 and not train & val and train | val == set(patients)
    assert split_patients(patients, 5, seed=3) == (train, val)
    assert split_patients(patients, 5, seed=4)[1] != val
    val_idx = split_indices(patients, 5, 3, "val")
    assert len(val_idx) == 50 and {patients[i] for i in val_idx} == val


def test_random_masks_cover_ten_to_seventy_five_percent():
    rng = np.random.default_rng(0)
    covers = [random_mask(rng).mean() for _ in range(60)]
    assert 0.10 <= min(covers) and max(covers) <= 0.80
    assert max(covers) - min(covers) > 0.3  # a spread of sizes, not one size


def test_training_items_are_deterministic_crops(ct_root):
    slices = load_ct_slices(ct_root / "ct-inpainting", progress=False)
    ds = CTTrainDataset(slices, crop_size=64, seed=1)
    a, b = ds[3], ds[3]
    assert a["ct"].shape == (64, 64) and a["missing_mask"].shape == (64, 64)
    assert all((a[k] == b[k]).all() for k in a)
    ds.set_epoch(1)
    assert not all((a[k] == ds[3][k]).all() for k in ("ct", "missing_mask"))
