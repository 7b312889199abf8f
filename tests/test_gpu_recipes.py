"""The one-call GPU recipe for CT capacity (`checkpoints/wip/ct_gpu_wide.py`), checked on the CPU before a GPU is
lent: the data it carries in two halves reads back as the data, and its arms build the networks it says."""
import sys

import numpy as np
import pytest

from diffusion.checkpoint import read_slim_config
from diffusion.config import apply_overrides, load_config
from diffusion.inference import build_denoiser
from diffusion.tasks.ct.layout import list_ct_ids, load_ct_slices
from tests.conftest import REPO, write_ct_layout

sys.path.insert(0, str(REPO / "checkpoints" / "wip"))
import ct_gpu_wide

RELEASE_LIMIT_BYTES = 25e6  # a released checkpoint's size limit; slim weights are fp16 (2 bytes per parameter)


def test_the_ct_data_halves_hold_whole_patients_and_read_back_as_the_data(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_ct_layout(src / "ct-inpainting", patients=5, slices=2, seed=3)
    monkeypatch.chdir(tmp_path)
    ct_gpu_wide.pack_data(src)
    halves = [tmp_path / part for part in ct_gpu_wide.PARTS]
    patients = [{sid.split("_")[0] for sid in ct_gpu_wide.json.loads((h / "slices.json").read_text())["ids"]}
                for h in halves]
    ids = list_ct_ids(src / "ct-inpainting")
    assert not patients[0] & patients[1]  # whole patients: the split by patient is the same on the device
    assert patients[0] | patients[1] == {sid.split("_")[0] for sid in ids} and all(patients)
    root = ct_gpu_wide.unpack_data(halves, tmp_path / "back")
    assert sorted(list_ct_ids(root)) == sorted(ids)
    a, b = (load_ct_slices(r, ids=ids, need_truth=True, progress=False) for r in (src / "ct-inpainting", root))
    for key in ("ct", "corrupted", "missing_mask", "tissue", "vertebra"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key


def _arm_config(arm: str) -> dict:
    args = ct_gpu_wide.arm_args("data", 32)(arm)
    sets = [args[i + 1] for i, flag in enumerate(args) if flag == "--set"]
    return apply_overrides(load_config(REPO / "configs" / "ct_gpu.yaml"), sets)


def test_the_ct_gpu_arms_build_the_networks_and_objectives_they_claim():
    release = read_slim_config(REPO / "checkpoints" / "ct_inpaint.safetensors")[0]
    configs = {arm: _arm_config(arm) for arm in ct_gpu_wide.ARMS}
    # reg_small is the release's network and objective, trained fresh
    assert configs["reg_small"]["model"] == release["model"]
    assert configs["reg_small"]["diffusion"]["objective"] == release["diffusion"]["objective"] == "regress"
    # the wide pair: one network, the two objectives, everything else equal (equal treatment)
    wide_reg, wide_dif = configs["reg_wide"], configs["dif_wide"]
    assert wide_reg["model"] == wide_dif["model"] != release["model"]
    assert (wide_reg["diffusion"]["objective"], wide_dif["diffusion"]["objective"]) == ("regress", "diffusion")
    assert wide_reg["train"] == wide_dif["train"] and wide_reg["data"] == wide_dif["data"]
    for arm, config in configs.items():  # whole slices, the releases' calibration patients held out
        assert config["data"]["crop_size"] == 256 and config["data"]["calib_patients"] == release["data"]["calib_patients"]
        parameters = sum(p.numel() for p in build_denoiser(config).net.parameters())
        assert 2 * parameters <= RELEASE_LIMIT_BYTES, arm


@pytest.mark.parametrize("parts", [1, 0])
def test_the_ct_gpu_recipe_refuses_a_missing_half_before_using_the_device(tmp_path, monkeypatch, capsys, parts):
    given = [str(tmp_path / name) for name in ct_gpu_wide.PARTS[:parts]] or [str(tmp_path / "nothing")]
    monkeypatch.setattr(sys, "argv", ["ct_gpu_wide.py", "--parts", *given, "--out", str(tmp_path / "out"),
                                      "--work", str(tmp_path / "work"), "--no-smoke"])
    assert ct_gpu_wide.main() == 1
    assert "need both halves" in capsys.readouterr().out
