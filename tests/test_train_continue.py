"""A run continued from its slim weights (--init, --continue-schedule): one claim per test."""
import pytest
import torch

import train_diffusion
from diffusion.checkpoint import load_slim, save_slim
from diffusion.errors import UserError
from tests.conftest import REPO, lr_by_step, write_ct_layout

TINY = str(REPO / "configs/ct_tiny.yaml")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four steps straight, and two steps then two more continued from the slim last.safetensors of the first two."""
    base = tmp_path_factory.mktemp("continue")
    write_ct_layout(base / "data" / "ct-inpainting")
    common = ["--config", TINY, "--data-root", str(base / "data"), "--set", "train.max_steps=4",
              "--set", "train.batch_size=2", "--set", "train.val_every=100", "--set", "train.log_every=1"]
    assert train_diffusion.main(common + ["--out", str(base / "straight")]) == 0
    assert train_diffusion.main(common + ["--out", str(base / "first"), "--max-steps", "2"]) == 0
    assert train_diffusion.main(common + ["--out", str(base / "cont"), "--init", str(base / "first" / "last.safetensors"),
                                          "--continue-schedule"]) == 0
    return base, common


def test_the_step_data_position_and_ema_decay_go_on_as_in_the_uninterrupted_run(runs):
    base, _ = runs
    straight = torch.load(base / "straight/checkpoints/step_0000004.pt", weights_only=False)
    cont = torch.load(base / "cont/checkpoints/step_0000004.pt", weights_only=False)
    assert (cont["step"], cont["epoch"], cont["batch"], cont["micro"]) == \
        (straight["step"], straight["epoch"], straight["batch"], straight["micro"]) == (4, 1, 1, 4)
    assert cont["ema"]["optimization_step"] == straight["ema"]["optimization_step"] == 4


def test_the_learning_rate_at_every_step_is_the_uninterrupted_runs(runs):
    base, _ = runs
    lr_straight, lr_cont = lr_by_step(base / "straight"), lr_by_step(base / "cont")
    assert sorted(lr_cont) == [3, 4] and all(lr_cont[s] == lr_straight[s] for s in (3, 4))


def test_continue_schedule_needs_init(runs, tmp_path):
    _, common = runs
    with pytest.raises(UserError, match="needs --init"):
        train_diffusion.main(common + ["--out", str(tmp_path / "x"), "--continue-schedule"])


def test_slim_weights_without_their_step_cannot_continue(runs, tmp_path):
    base, common = runs
    state, config, _ = load_slim(base / "first" / "last.safetensors")
    save_slim(tmp_path / "nostep.safetensors", state, config, {})
    with pytest.raises(UserError, match="does not record the step"):
        train_diffusion.main(common + ["--out", str(tmp_path / "y"), "--init", str(tmp_path / "nostep.safetensors"),
                                       "--continue-schedule"])


def test_the_saved_step_must_lie_inside_the_schedule(runs, tmp_path):
    base, common = runs
    with pytest.raises(UserError, match="not inside this run's train.max_steps 2"):
        train_diffusion.main(common + ["--out", str(tmp_path / "z"), "--init", str(base / "first" / "last.safetensors"),
                                       "--continue-schedule", "--set", "train.max_steps=2"])


def test_init_from_a_checkpoint_older_than_a_model_key_builds_the_same_network(runs, tmp_path):
    base, common = runs
    state, config, _ = load_slim(base / "first" / "last.safetensors")
    older = {**config, "model": {k: v for k, v in config["model"].items() if k not in ("attention_head_dim", "dropout")}}
    save_slim(tmp_path / "older.safetensors", state, older, {})
    assert train_diffusion.main(common + ["--out", str(tmp_path / "older"), "--init",
                                          str(tmp_path / "older.safetensors"), "--max-steps", "1"]) == 0


def test_init_from_another_network_is_refused(runs, tmp_path):
    base, common = runs
    state, config, _ = load_slim(base / "first" / "last.safetensors")
    save_slim(tmp_path / "other.safetensors", state, {**config, "model": {**config["model"], "dropout": 0.1}}, {})
    with pytest.raises(UserError, match="model config differs"):
        train_diffusion.main(common + ["--out", str(tmp_path / "w"), "--init", str(tmp_path / "other.safetensors")])
