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


def _ct_case(error: np.ndarray, spread: np.ndarray):
    """A 4x8 slice, all missing and inside the body, truth 100, prediction 100 + error, the given spread."""
    from diffusion.inference import Prediction
    from diffusion.tasks import Case, Example

    truth = np.full(error.shape, 100, np.uint8)
    inputs = {"missing_mask": np.ones(error.shape, np.uint8), "tissue": np.full(error.shape, 100, np.uint8)}
    image = (truth + error).astype(np.uint8)
    return Example(Case("000_0", "000"), inputs, truth), Prediction(image=image.astype(float), uncertainty=spread), image


def test_ct_uncertainty_metric_separates_informative_from_uninformative_spread():
    task = get_task("ct")
    error = np.zeros((4, 8))
    error[0, :4] = 20                                   # 4 of 32 pixels are badly wrong
    agree = np.where(error > 0, 10.0, 0.1)              # the spread marks exactly those
    disagree = np.where(error > 0, 0.1, 10.0)           # the spread marks everything else
    for spread, informative in ((agree, True), (disagree, False)):
        example, prediction, image = _ct_case(error, spread)
        stats = task.uncertainty_stats(example, prediction, image)
        summary = task.uncertainty_summary({k: list(v) for k, v in stats.items()})
        assert stats["top"][1] == 4 and stats["rest"][1] == 28  # ceil(10 % of 32) most uncertain pixels
        if informative:
            assert summary["mae_top10"] == 20 and summary["mae_rest"] == 0 and summary["ratio"] is None
        else:
            assert summary["mae_top10"] == 0 and summary["mae_rest"] == 80 / 28 and summary["ratio"] == 0
        by_bin = {(r["spread_from"], r["spread_to"]): r for r in summary["reliability"] if r["share"]}
        assert by_bin[(8.0, 16.0)]["mae"] == (20 if informative else 0)
        assert abs(sum(r["share"] for r in summary["reliability"]) - 1) < 1e-9


def test_bce_dice_loss_rewards_the_right_mask_and_asks_for_nothing_on_empty_crops():
    """The segmentation loss on logits: the right mask costs almost nothing, its inverse a lot, a half-right one in
    between; on an empty (healthy) target an empty prediction costs almost nothing; forward() reads the output as a
    logit, so the x0 estimate is 2 sigmoid - 1."""
    from diffusion.denoiser import soft_dice_loss

    label = torch.zeros(1, 1, 8, 8)
    label[..., :4, :4] = 1
    target = label * 2 - 1
    weight = torch.ones_like(label)

    def loss_for(logits):
        d = Denoiser(ConstantNet(logits), loss="bce_dice", objective="regress")
        return float(d.loss(target, torch.zeros(1, 1, 8, 8), None, weight)[0].detach())

    right, wrong = loss_for(10 * target), loss_for(-10 * target)
    half = 10 * target.clone()
    half[..., :2, :4] = -10
    assert right < 0.01 and wrong > 5 and right < loss_for(half) < wrong
    empty = -torch.ones(1, 1, 8, 8)
    d = Denoiser(ConstantNet(-10 * torch.ones(1, 1, 8, 8)), loss="bce_dice", objective="regress")
    assert float(d.loss(empty, torch.zeros(1, 1, 8, 8), None, weight)[0].detach()) < 0.01
    assert float(soft_dice_loss(torch.full((1, 1, 8, 8), 0.9), torch.zeros(1, 1, 8, 8), weight)[0]) > 0.95
    x0, _ = d(torch.zeros(1, 1, 8, 8), torch.tensor(999), torch.zeros(1, 1, 8, 8))
    assert torch.allclose(x0, 2 * torch.sigmoid(torch.tensor(-10.0)) - 1)
    with pytest.raises(ValueError, match="bce_dice"):
        Denoiser(ConstantNet(target), loss="bce_dice", prediction_type="epsilon")
