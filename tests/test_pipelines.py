"""The diffusers pipelines: export -> from_pretrained -> the prediction infer.py gives for the same input and seed."""
import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

import infer
from diffusion.checkpoint import load_slim
from diffusion.data.images import read_png
from diffusion.inference import case_seed
from diffusion.pipelines import CTInpaintPipeline, TumorSegmentationPipeline
from diffusion.tasks import get_task
from eval import export
from tests.conftest import REPO, write_ct_layout, write_tumor_layout

PIPELINE = {"ct": CTInpaintPipeline, "tumor": TumorSegmentationPipeline}


def infer_and_pipeline(task_name: str, checkpoint, root, tmp_path):
    """(infer.py's written prediction, the exported pipeline's) for the first case of `root`, default settings."""
    out = tmp_path / "infer"
    assert infer.main(["--task", task_name, "--data-root", str(root), "--checkpoint", str(checkpoint), "--out",
                       str(out), "--limit", "1", "--seed", "3"]) == 0
    task = get_task(task_name)
    root_dir = task.layout.resolve_root(root)[0]
    case = task.layout.list_cases(root_dir)[0]
    inputs = task.layout.read_case(root_dir, case, with_truth=False).inputs
    assert export.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "exported")]) == 0
    pipe = PIPELINE[task_name].from_pretrained(tmp_path / "exported")
    call = ({"corrupted": inputs["corrupted"], "mask": inputs["missing_mask"] * 255, "tissue": inputs["tissue"],
             "vertebra": inputs["vertebra"]} if task_name == "ct" else {"image": inputs["image"]})
    result = pipe(**call, seed=case_seed(case.id, 3))
    written = read_png(task.layout.prediction_path(out, case))
    return (written[..., 0] if written.ndim == 3 else written), result


@pytest.mark.parametrize("task_name", ["ct", "tumor"])
def test_tiny_checkpoint_round_trip_predicts_what_infer_predicts(task_name, trained_tiny, trained_tumor_tiny, tmp_path):
    checkpoint = (trained_tiny if task_name == "ct" else trained_tumor_tiny) / "last.safetensors"
    root = tmp_path / "data"
    write_ct_layout(root / "ct-inpainting", patients=1, slices=1) if task_name == "ct" else \
        write_tumor_layout(root / "tumor-segmentation", patients=1, controls=0)
    written, result = infer_and_pipeline(task_name, checkpoint, root, tmp_path)
    assert written.dtype == result.prediction.dtype == np.uint8
    assert np.array_equal(written, result.prediction)
    assert result.uncertainty.shape == written.shape


@pytest.mark.parametrize("task_name", ["ct", "tumor"])
def test_released_checkpoint_round_trip_predicts_what_infer_predicts(task_name, tmp_path):
    checkpoint = REPO / "checkpoints" / get_task(task_name).released
    root = tmp_path / "data"
    write_ct_layout(root / "ct-inpainting", patients=1, slices=1) if task_name == "ct" else \
        write_tumor_layout(root / "tumor-segmentation", patients=1, controls=0)
    written, result = infer_and_pipeline(task_name, checkpoint, root, tmp_path)
    assert np.array_equal(written, result.prediction)


def test_the_unet_loads_alone_with_the_checkpoints_weights(trained_tiny, tmp_path):
    assert export.main(["--checkpoint", str(trained_tiny / "last.safetensors"), "--out", str(tmp_path / "x")]) == 0
    unet = UNet2DModel.from_pretrained(tmp_path / "x", subfolder="unet")
    state, _, _ = load_slim(trained_tiny / "last.safetensors")
    for name, tensor in unet.state_dict().items():
        assert torch.equal(tensor.float(), state[name]), name


def test_the_exported_card_has_a_yaml_header_with_the_license(tmp_path):
    checkpoint = REPO / "checkpoints" / "tumor_seg.safetensors"
    assert export.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "x")]) == 0
    card = (tmp_path / "x" / "README.md").read_text()
    header = card.split("---")[1]
    assert "license: mit" in header and "library_name: diffusers" in header
    assert "TumorSegmentationPipeline.from_pretrained" in card and "## Limits" in card  # usage, then the card


def test_pil_images_and_arrays_give_the_same_answer(trained_tiny):
    from PIL import Image

    from diffusion.data.synthetic import make_ct_slice

    pipe = CTInpaintPipeline.from_checkpoint(trained_tiny / "last.safetensors")
    _, corrupted, mask, tissue = make_ct_slice(np.random.default_rng(1))
    arrays = pipe(corrupted=corrupted, mask=mask, tissue=tissue, vertebra=3)
    pil = pipe(corrupted=Image.fromarray(corrupted), mask=Image.fromarray(mask), tissue=Image.fromarray(tissue),
               vertebra=3)
    assert np.array_equal(arrays.prediction, pil.prediction)
