import numpy as np
import pytest
import torch

from diffusion.denoiser import Denoiser
from diffusion.tasks import get_task


class ConstantNet(torch.nn.Module):
    """Outputs a fixed tensor whatever the input (to probe the loss)."""

    def __init__(self, output):
        super().__init__()
        self.output = output
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, class_labels=None):
        return type("Out", (), {"sample": self.output + 0 * self.p})()


def test_condition_shapes_and_values():
    task = get_task("ct")
    known = torch.full((2, 8, 8), 255, dtype=torch.uint8)
    missing = torch.zeros(2, 8, 8, dtype=torch.uint8)
    missing[:, :4] = 1
    tissue = torch.zeros(2, 8, 8, dtype=torch.uint8)
    tissue[:, 2:6] = 100
    tissue[:, 6:] = 255
    cond = task.condition(known, missing, tissue)
    assert cond.shape == (2, task.cond_channels, 8, 8)
    assert torch.all(cond[:, 0, :4] == 0) and torch.all(cond[:, 0, 4:] == 1)  # known pixels only, in [-1, 1]
    assert torch.equal(cond[:, 1], missing.float())
    assert torch.equal(cond[:, 2], (tissue > 0).float())
    assert torch.equal(cond[:, 3], (tissue == 255).float())


def test_finalize_keeps_known_pixels_and_zeroes_outside_body():
    task = get_task("ct")
    known = torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8)
    missing = torch.zeros(1, 8, 8, dtype=torch.uint8)
    missing[:, ::2] = 1
    tissue = torch.full((1, 8, 8), 100, dtype=torch.uint8)
    tissue[:, :, :2] = 0
    out = task.finalize(torch.zeros(1, 1, 8, 8), known, missing, tissue)  # x0 = 0 -> grey 127.5
    inside = tissue > 0
    assert torch.equal(out[(missing == 0) & inside], known[(missing == 0) & inside].float())
    assert torch.all(out[(missing == 1) & inside] == 127.5)
    assert torch.all(out[~inside] == 0)


def test_loss_ignores_pixels_with_zero_weight():
    weight = torch.zeros(2, 1, 8, 8)
    weight[:, :, :4] = 1
    x0 = torch.zeros(2, 1, 8, 8)
    cond = torch.zeros(2, 4, 8, 8)
    base = torch.zeros(2, 1, 8, 8)
    changed = base.clone()
    changed[:, :, 4:] = 5.0  # only where the weight is 0
    t = torch.tensor([10, 900])
    losses = []
    for output in (base, changed):
        d = Denoiser(ConstantNet(output), prediction_type="sample", loss="l1")
        losses.append(d.loss(x0, cond, None, weight, t=t, noise=torch.zeros_like(x0)))
    assert torch.allclose(losses[0], losses[1])
    changed[:, :, 0] = 1.0  # now a weighted pixel differs
    d = Denoiser(ConstantNet(changed), prediction_type="sample", loss="l1")
    assert torch.all(d.loss(x0, cond, None, weight, t=t, noise=torch.zeros_like(x0)) > losses[0])


def test_parameterisations_recover_x0():
    """Whatever the network predicts, forward() turns an exact prediction back into x0."""
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    noise = torch.randn(3, 1, 4, 4)
    t = torch.tensor([5, 500, 990])
    for kind in ("epsilon", "v_prediction", "sample"):
        d = Denoiser(ConstantNet(torch.zeros(1)), prediction_type=kind)
        a, s = d.alpha_sigma(t)
        exact = {"epsilon": noise, "v_prediction": a * noise - s * x0, "sample": x0}[kind]
        d.net.output = exact
        x_t = d.add_noise(x0, noise, t)
        x0_hat, eps_hat = d(x_t, t, torch.zeros(3, 0, 4, 4))
        assert torch.allclose(x0_hat, x0, atol=1e-3), kind


def test_config_overrides_and_unknown_keys():
    import pytest

    from diffusion.config import DEFAULTS, apply_overrides
    from diffusion.errors import UserError

    config = apply_overrides(DEFAULTS, ["diffusion.prediction_type=epsilon", "train.lr=1e-3", "model.block_out_channels=[16, 32]"])
    assert config["diffusion"]["prediction_type"] == "epsilon" and config["train"]["lr"] == 1e-3
    assert config["model"]["block_out_channels"] == [16, 32] and DEFAULTS["diffusion"]["prediction_type"] == "sample"
    with pytest.raises(UserError, match="unknown key 'diffusion.nope'"):
        apply_overrides(DEFAULTS, ["diffusion.nope=1"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        apply_overrides(DEFAULTS, ["diffusion.loss"])


def test_tumor_weight_scales_only_tumor_pixels():
    import torch

    from diffusion.tasks import get_task

    label = torch.zeros(2, 4, 6, dtype=torch.uint8)
    label[0, 1:3, 2:4] = 1
    batch = {"image": torch.full((2, 4, 6), 200, dtype=torch.uint8), "label": label, "row0": torch.tensor([0, 10])}
    target, _cond, labels, weight = get_task("tumor", {"tumor_weight": 5.0}).training_batch(batch)
    assert labels is None and target.shape == weight.shape == (2, 1, 4, 6)
    assert torch.equal(weight[:, 0] == 5.0, label.bool()) and torch.all(weight[:, 0][label == 0] == 1.0)
    # without the option every pixel weighs the same
    assert torch.all(get_task("tumor").training_batch(batch)[3] == 1.0)
    assert get_task("tumor", {"tumor_weight": 5.0}) is not get_task("tumor")


@pytest.mark.parametrize("task_name", ["ct", "tumor"])
def test_a_training_batch_is_computed_on_the_batch_s_device(task_name):
    """The GPU path without a GPU: a batch on the meta device (a device other than the CPU) must give target,
    condition and weight there; a tensor made on the CPU inside training_batch (the tumor position channel once was,
    which broke training on the first GPU it met) mixes devices and raises."""
    n, h, w = 2, 8, 6
    if task_name == "ct":
        batch = {"ct": torch.zeros(n, h, w, dtype=torch.uint8), "missing_mask": torch.zeros(n, h, w),
                 "tissue": torch.zeros(n, h, w, dtype=torch.uint8), "vertebra": torch.tensor([3, 4])}
    else:
        batch = {"image": torch.zeros(n, h, w, dtype=torch.uint8), "label": torch.zeros(n, h, w, dtype=torch.uint8),
                 "row0": torch.tensor([0, 10])}
    out = get_task(task_name).training_batch({k: v.to("meta") for k, v in batch.items()})
    assert all(t.device.type == "meta" for t in out if t is not None)


@pytest.mark.parametrize("field, file_key, image", [
    ("mask_image", "mask", np.full((256, 256), 7, np.uint8)),
    ("tissue_image", "tissue", np.full((256, 256), 50, np.uint8)),
    ("corrupted_image", "corrupted", np.zeros((128, 256), np.uint8)),
])
def test_a_bad_ct_image_gets_the_same_words_on_disk_and_in_a_request(ct_root, field, file_key, image):
    """The layout's rule is the codec's rule: the same broken image, written as a file and sent as a request field,
    is refused with the same problem (after the file's path / the field's name)."""
    from diffusion.codec import BadInput
    from diffusion.data.images import write_png
    from diffusion.errors import DataError
    from diffusion.tasks.ct.layout import slice_files

    task = get_task("ct")
    root = ct_root / "ct-inpainting"
    case = task.layout.list_cases(root)[0]
    body = task.codec.request_body(root, case)
    path = slice_files(root, case.id)[file_key]
    write_png(path, image)
    with pytest.raises(DataError) as on_disk:
        task.layout.read_case(root, case, with_truth=False)
    with pytest.raises(BadInput) as in_request:
        task.codec.parse_request(task.codec.request_model(**{**body, field: task.codec.request_body(root, case)[field]}))
    assert str(on_disk.value) == f"{path}: {str(in_request.value).split(': ', 1)[1]}"
    assert str(in_request.value).startswith(f"{field}: ")


@pytest.mark.parametrize("image", [
    np.dstack([np.full((50, 40), 200, np.uint8), np.zeros((50, 40), np.uint8), np.zeros((50, 40), np.uint8)]),
    np.full((50, 401, 3), 255, np.uint8),
])
def test_a_bad_pet_image_gets_the_same_words_on_disk_and_in_a_request(tumor_root, image):
    from diffusion.codec import BadInput
    from diffusion.data.images import write_png
    from diffusion.errors import DataError
    from diffusion.tasks.tumor.layout import case_files

    task = get_task("tumor")
    root = tumor_root / "tumor-segmentation"
    case = task.layout.list_cases(root)[0]
    path = case_files(root, case)[0]
    write_png(path, image)
    with pytest.raises(DataError) as on_disk:
        task.layout.read_case(root, case, with_truth=False)
    with pytest.raises(BadInput) as in_request:
        task.codec.parse_request(task.codec.request_model(**task.codec.request_body(root, case)))
    assert str(on_disk.value) == f"{path}: {str(in_request.value).split(': ', 1)[1]}"
