"""Progressive distillation, the distilled sampler and the regressor baseline, on tiny generated data."""
import csv

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import serve
import train_diffusion
from diffusion.checkpoint import load_slim
from diffusion.config import load_config
from diffusion.distill import DistillationLoss
from diffusion.errors import UserError
from diffusion.inference import Predictor, build_denoiser
from samplers import SAMPLERS, SamplerSpec, parse_spec
from samplers.known import alpha_bar
from tests.conftest import REPO, ct_request, make_ct_slice, write_ct_layout

DISTILL_TINY = str(REPO / "configs/ct_distill_tiny.yaml")
TINY = str(REPO / "configs/ct_tiny.yaml")


def distill(tmp_path, teacher, out: str, *extra: str):
    return train_diffusion.main(["--config", DISTILL_TINY, "--out", str(tmp_path / out), "--data-root",
                                 str(tmp_path / "data"), "--set", f"distill.teacher={teacher}", *extra])


@pytest.fixture
def student_runs(trained_tiny, tmp_path):
    """Two distillation rounds from the tiny teacher: 4 DDIM steps -> 2 -> 1."""
    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    assert distill(tmp_path, trained_tiny / "last.safetensors", "round1") == 0
    assert distill(tmp_path, tmp_path / "round1" / "last.safetensors", "round2") == 0
    return tmp_path


def test_each_round_halves_the_step_count_in_its_saved_config(student_runs, trained_tiny):
    teacher_state, teacher_config, _ = load_slim(trained_tiny / "last.safetensors")
    for run, steps in [("round1", 2), ("round2", 1)]:
        state, config, meta = load_slim(student_runs / run / "last.safetensors", expected_task="ct")
        assert config["distill"]["student_steps"] == steps and meta["step"] == 2
        assert (config["sample"]["sampler"], config["sample"]["steps"]) == ("distilled", steps)
        assert config["model"] == teacher_config["model"]
    # the student starts from the teacher: two small steps away from its weights, not from a random network
    state, _, _ = load_slim(student_runs / "round1" / "last.safetensors")
    assert max(float((state[k].float() - v.float()).abs().max()) for k, v in teacher_state.items()) < 0.05
    # a one-step student cannot be halved again
    with pytest.raises(UserError, match="even number"):
        distill(student_runs, student_runs / "round2" / "last.safetensors", "round3")


def test_distillation_target_lands_on_the_teachers_two_steps():
    """One DDIM step of the student from x_t with the target x0 reaches exactly where two teacher steps go."""
    torch.manual_seed(0)
    config = load_config(TINY)
    teacher = build_denoiser(config).eval()
    loss = DistillationLoss(build_denoiser(config), teacher, student_steps=2)
    grid = loss.grid.tolist()
    assert grid == [999, 749, 499, 249, -1]
    x0 = torch.rand(2, 1, 16, 16) * 2 - 1
    cond, labels = torch.rand(2, 4, 16, 16), torch.tensor([3, 7])
    for i in range(2):  # the middle step and the last step (to the clean image)
        t, t_mid, t_next = (torch.full((2,), grid[2 * i + k]) for k in range(3))
        x_t = teacher.add_noise(x0, torch.randn_like(x0), t)
        target = loss.teacher_target(x_t, t, t_mid, t_next, cond, labels, None)
        seen = []
        steps = [g for g in grid[2 * i:2 * i + 3] if g >= 0]  # ending at -1 means ending on the clean image
        SAMPLERS["ddim"](teacher, x_t, steps, extra_args={"cond": cond, "class_labels": labels},
                         callback=seen.append)
        teacher_next = seen[1]["x"]
        (a_t, s_t), (a_n, s_n) = ((alpha_bar(teacher, u).sqrt(), (1 - alpha_bar(teacher, u)).sqrt()) for u in (t, t_next))
        student_next = a_n * target + s_n * (x_t - a_t * target) / s_t
        assert torch.allclose(student_next, teacher_next, atol=1e-4)
    out = loss(x0, cond, labels, torch.ones_like(x0))
    assert out.shape == (2,) and torch.isfinite(out).all()
    out.mean().backward()  # gradients reach the student only
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in loss.denoiser.parameters())


def test_distilled_sampler_runs_with_known_pixels_and_ensembles_and_checks_the_step_count(student_runs):
    inpainter = Predictor.from_checkpoint(student_runs / "round1" / "last.safetensors")
    rng = np.random.default_rng(0)
    corrupted = rng.integers(0, 255, (1, 32, 32), dtype=np.uint8)
    missing = np.zeros((1, 32, 32), np.uint8)
    missing[:, 8:20, 8:20] = 1
    corrupted[missing > 0] = 0
    tissue = np.full((1, 32, 32), 100, np.uint8)
    inputs = {"corrupted": corrupted[0], "missing_mask": missing[0], "tissue": tissue[0], "vertebra": 4}
    pred = inpainter.predict_one(inputs, ensemble=3)  # default: distilled:2
    assert np.array_equal(pred.image[missing[0] == 0], corrupted[0][missing[0] == 0].astype(np.float32))
    assert pred.uncertainty[missing[0] > 0].max() > 0 and pred.uncertainty[missing[0] == 0].max() == 0
    with pytest.raises(UserError, match="distilled for 2 steps"):
        inpainter.predict_one(inputs, spec=SamplerSpec("distilled", 4))


def test_regressor_trains_deterministically_and_only_runs_as_regressor(tmp_path, trained_tiny):
    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    assert train_diffusion.main(["--config", TINY, "--out", str(tmp_path / "reg"), "--data-root",
                                 str(tmp_path / "data"), "--set", "diffusion.objective=regress",
                                 "--set", "sample.sampler=regressor", "--set", "sample.steps=1"]) == 0
    denoiser = build_denoiser(load_config(TINY) | {"diffusion": {**load_config(TINY)["diffusion"],
                                                                  "objective": "regress"}})
    x0, cond = torch.rand(2, 1, 16, 16) * 2 - 1, torch.rand(2, 4, 16, 16)
    labels, weight = torch.tensor([1, 2]), torch.ones(2, 1, 16, 16)
    denoiser.eval()
    assert torch.equal(denoiser.loss(x0, cond, labels, weight), denoiser.loss(x0, cond, labels, weight))
    regressor = Predictor.from_checkpoint(tmp_path / "reg" / "last.safetensors")
    assert regressor.default_spec()[0] == SamplerSpec("regressor", 1)
    with pytest.raises(UserError, match="a regressor"):
        regressor.check_spec(parse_spec("ddim:2"))
    _serves_one_slice(regressor)  # the service's warm-up and deadline plan use the checkpoint's own sampler
    diffusion = Predictor.from_checkpoint(trained_tiny / "last.safetensors")
    with pytest.raises(UserError, match="not a regressor"):
        diffusion.check_spec(parse_spec("regressor:1"))
    with pytest.raises(UserError, match="not a distilled student"):
        diffusion.check_spec(parse_spec("distilled:1"))


def _serves_one_slice(inpainter):
    with TestClient(serve.create_app(serve.Service(inpainter), budget_s=8.0)) as client:
        r = client.post("/predict", json=ct_request(5, vertebrae=3))
    assert r.status_code == 200, r.text
    assert r.headers["x-sampler"].startswith(str(inpainter.default_spec()[0]))


def test_ablation_picks_the_checkpoint_each_sampler_needs(student_runs, trained_tiny, tmp_path):
    from eval import ablate

    write_ct_layout(tmp_path / "small" / "ct-inpainting", patients=2, slices=1)
    args = ["--task", "ct", "--data-root", str(tmp_path / "small"), "--checkpoint", str(trained_tiny / "last.safetensors"),
            "--ensemble", "1", "--split", "all", "--out", str(tmp_path / "abl")]
    students = f"{student_runs / 'round1' / 'last.safetensors'},{student_runs / 'round2' / 'last.safetensors'}"
    assert ablate.main(args + ["--samplers", "ddim:4,distilled:2,distilled:1", "--models", students]) == 0
    rows = list(csv.DictReader(open(tmp_path / "abl" / "results.csv")))
    assert [(r["sampler"], r["nfe"]) for r in rows] == [("ddim:4", "4"), ("distilled:2", "2"), ("distilled:1", "1")]
    with pytest.raises(UserError, match="no checkpoint can run it"):
        ablate.main(args + ["--samplers", "distilled:4", "--models", students])


def test_parse_spec_rejects_a_multi_step_regressor():
    assert parse_spec("regressor:1").nfe == 1 and parse_spec("distilled:4").nfe == 4
    with pytest.raises(ValueError, match="exactly one step"):
        parse_spec("regressor:4")


class MemberEcho(torch.nn.Module):
    """A toy teacher whose answer depends on its starting noise and, asymmetrically, on the condition: x0 =
    tanh(mean of x_t) + the condition's first channel. Members differ, and a mirrored member differs unless
    mirrored back."""

    num_train_timesteps = 1000

    def __init__(self):
        super().__init__()
        self.register_buffer("alphas_cumprod", torch.linspace(0.9999, 0.0001, 1000))
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, cond, class_labels=None):
        x0 = torch.tanh(x.mean((1, 2, 3), keepdim=True)) + cond[:, :1]
        return x0, torch.zeros_like(x)


def test_ensemble_distillation_target_is_the_teachers_flip_ensemble_median():
    from diffusion.distill import EnsembleDistillationLoss
    from samplers.ensemble import reduce_ensemble

    teacher = MemberEcho()
    student = build_denoiser(load_config(TINY))
    cond = torch.zeros(2, 4, 8, 8)
    cond[:, 0] = torch.linspace(-0.5, 0.5, 8)  # a left-right ramp: a member left mirrored would be wrong
    loss = EnsembleDistillationLoss(student, teacher, ensemble=5, flip=True)
    torch.manual_seed(7)
    target = loss.ensemble_target(cond, None, None)
    torch.manual_seed(7)  # the same draws, member by member, by hand
    members = []
    for e in range(5):
        x = torch.randn(2, 1, 8, 8)
        c = cond.flip(-1) if e % 2 else cond
        x0 = teacher(x, None, c)[0]
        members.append(x0.flip(-1) if e % 2 else x0)
    expected = torch.stack([reduce_ensemble(torch.stack(members)[:, i], "median")[0] for i in range(2)])
    assert torch.allclose(target, expected)
    offsets = torch.stack([m[:, :, 0, 0] - cond[:, :1, 0, 0] for m in members])
    assert offsets.std() > 0.01  # the members really differ, so the median is not any single one
    assert torch.allclose(target - cond[:, :1], (target - cond[:, :1])[..., :1, :1].expand_as(target))  # unmirrored


def test_ensemble_distillation_trains_a_one_step_student(trained_tiny, tmp_path):
    """`distill.mode: ensemble` from the tiny teacher (ensemble 2 in its config): a student saved as
    `distilled:1`, which infer runs at one network evaluation per member."""
    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    assert distill(tmp_path, trained_tiny / "last.safetensors", "ens", "--set", "distill.mode=ensemble") == 0
    _, config, _ = load_slim(tmp_path / "ens" / "last.safetensors")
    assert config["distill"]["student_steps"] == 1 and config["distill"]["teacher_ensemble"] == 2
    assert (config["sample"]["sampler"], config["sample"]["steps"], config["sample"]["ensemble"]) == ("distilled", 1, 1)
    inpainter = Predictor.from_checkpoint(tmp_path / "ens" / "last.safetensors")
    _, corrupted, mask, tissue = make_ct_slice(np.random.default_rng(0))
    pred = inpainter.predict_one({"corrupted": corrupted, "missing_mask": (mask > 0).astype(np.uint8),
                                  "tissue": tissue, "vertebra": 3})
    assert pred.image.shape == (256, 256)
