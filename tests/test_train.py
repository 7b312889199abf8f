"""train_diffusion.py end to end on tiny generated data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_diffusion
from diffusion.checkpoint import load_slim, save_slim
from tests.conftest import REPO, lr_by_step, write_ct_layout

TINY = str(REPO / "configs/ct_tiny.yaml")


def test_two_steps_write_expected_files(trained_tiny):
    run = trained_tiny
    for name in ["config.yaml", "metrics.jsonl", "curves.png", "last.safetensors", "best.safetensors"]:
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000001.pt", "step_0000002.pt"]
    assert list((run / "samples").glob("step_*.png"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert all(r["val_mae"] > 0 for r in rows if "val_mae" in r)
    _, config, meta = load_slim(run / "last.safetensors", expected_task="ct")
    assert config["model"]["block_out_channels"] == [8, 16] and meta["step"] == 2


def test_resume_latest_continues_from_the_last_step(tmp_path):
    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    args = ["--config", TINY, "--out", str(tmp_path / "run"), "--data-root", str(tmp_path / "data"),
            "--set", "train.max_steps=3"]
    assert train_diffusion.main(args + ["--max-steps", "2"]) == 0
    before = torch.load(tmp_path / "run/checkpoints/step_0000002.pt", weights_only=False)
    assert train_diffusion.main(args + ["--resume", "latest"]) == 0
    after = torch.load(tmp_path / "run/checkpoints/step_0000003.pt", weights_only=False)
    assert after["step"] == 3 and before["step"] == 2
    steps = [json.loads(x)["step"] for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert steps.count(3) == 2 and steps.count(1) == 2  # one loss row and one validation row per step


def test_resume_is_continuation_two_plus_two_steps_equal_four(tmp_path):
    """Stopping after 2 steps and resuming for 2 more gives the weights of 4 steps straight: data position
    (mid-epoch: 3 batches an epoch here), random draws, optimiser, schedule and EMA all continue."""
    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    common = ["--config", TINY, "--data-root", str(tmp_path / "data"), "--set", "train.max_steps=4",
              "--set", "train.batch_size=2", "--set", "train.val_every=100"]
    assert train_diffusion.main(common + ["--out", str(tmp_path / "straight")]) == 0
    assert train_diffusion.main(common + ["--out", str(tmp_path / "split"), "--max-steps", "2"]) == 0
    assert train_diffusion.main(common + ["--out", str(tmp_path / "split"), "--resume", "latest"]) == 0
    straight = torch.load(tmp_path / "straight/checkpoints/step_0000004.pt", weights_only=False)
    split = torch.load(tmp_path / "split/checkpoints/step_0000004.pt", weights_only=False)
    assert (straight["epoch"], straight["batch"]) == (1, 1)
    for key in ("model", "ema"):
        a = straight[key] if key == "model" else dict(enumerate(straight[key]["shadow_params"]))
        b = split[key] if key == "model" else dict(enumerate(split[key]["shadow_params"]))
        for name in a:
            assert torch.equal(a[name], b[name]), (key, name)


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_the_run_resumes(tmp_path, monkeypatch):
    """A SIGTERM during step 3 (sent from inside the loop, so the timing is exact) ends the run after step 3 with a
    full checkpoint and exit code 0, the handlers that were there before come back, and --resume goes on."""
    import signal

    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    args = ["--config", TINY, "--out", str(tmp_path / "run"), "--data-root", str(tmp_path / "data"),
            "--set", "train.max_steps=1000", "--set", "train.val_every=1000", "--set", "train.checkpoint_every=1000"]
    real_seed = train_diffusion.micro_batch_seed

    def seed_then_signal(seed, process, micro):
        if micro == 2:  # the third micro-batch = step 3 (no accumulation in the tiny config)
            signal.raise_signal(signal.SIGTERM)
        return real_seed(seed, process, micro)

    def not_handled(signum, frame):  # if training does not take the signal, this fails the test (not pytest)
        raise AssertionError("SIGTERM reached the handler outside training")

    monkeypatch.setattr(train_diffusion, "micro_batch_seed", seed_then_signal)
    previous = signal.signal(signal.SIGTERM, not_handled)
    try:
        assert train_diffusion.main(args) == 0
        assert signal.getsignal(signal.SIGTERM) is not_handled
    finally:
        signal.signal(signal.SIGTERM, previous)
    stopped = torch.load(train_diffusion.latest_full_state(tmp_path / "run/checkpoints"), weights_only=False)
    assert stopped["step"] == 3
    monkeypatch.setattr(train_diffusion, "micro_batch_seed", real_seed)
    assert train_diffusion.main(args + ["--resume", "latest", "--max-steps", "4"]) == 0
    assert torch.load(tmp_path / "run/checkpoints/step_0000004.pt", weights_only=False)["step"] == 4


def test_stop_request_keeps_an_ignored_sigint_ignored_and_restores_the_handlers():
    """A background job (`cmd &`) starts with SIGINT ignored: training must not start reacting to it."""
    import signal

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with train_diffusion.StopRequest() as request:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
            assert request.requested is None
            signal.raise_signal(signal.SIGTERM)
            assert request.requested == "SIGTERM"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == before[1]
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


def test_a_batch_that_does_not_split_over_processes_is_a_clear_error():
    import pytest

    from diffusion.errors import UserError

    assert train_diffusion.per_process_batch({"batch_size": 64, "grad_accum": 2}, 4) == 8
    with pytest.raises(UserError, match="batch_size 64 does not divide by 6 process"):
        train_diffusion.per_process_batch({"batch_size": 64, "grad_accum": 1}, 6)


def test_in_training_validation_equals_infer_on_the_same_checkpoint_and_slices(trained_tiny):
    """The validation score logged at the last step is what infer.py reports for the saved checkpoint on the
    same validation slices."""
    import infer

    rows = [json.loads(line) for line in (trained_tiny / "metrics.jsonl").read_text().splitlines()]
    logged = [r["val_mae"] for r in rows if "val_mae" in r and r["step"] == 2][-1]
    out = trained_tiny.parent / "infer_val"
    assert infer.main(["--task", "ct", "--checkpoint", str(trained_tiny / "last.safetensors"), "--split", "val",
                       "--limit", "2", "--data-root", str(trained_tiny.parent / "data"), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 2
    assert abs(metrics["mae"] - logged) < 1e-6, (metrics["mae"], logged)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    out = subprocess.run([sys.executable, "train_diffusion.py", "--config", TINY, "--out", str(tmp_path / "r"),
                          "--data-root", str(tmp_path / "data"), "--resume", "latest"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("error: --resume latest")
    assert "Traceback" not in out.stderr


def launch_two_processes(args: list[str], cwd=REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "train_diffusion.py", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def test_two_cpu_processes_schedule_max_minutes_and_resume(tmp_path):
    """Two CPU processes (accelerate's torchrun launcher; gloo without CUDA):
    - the learning rate at every step equals the one-process run's (the schedule counts optimiser steps);
    - --max-minutes stops both processes at the same step, exits 0 and leaves a checkpoint;
    - --resume latest continues from it."""
    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    common = ["--config", TINY, "--data-root", str(tmp_path / "data"), "--set", "train.max_steps=100000",
              "--set", "train.warmup_steps=4", "--set", "train.val_every=100000",
              "--set", "train.checkpoint_every=100000"]
    assert train_diffusion.main(common + ["--out", str(tmp_path / "one"), "--max-steps", "6"]) == 0
    first = launch_two_processes(common + ["--out", str(tmp_path / "two"), "--max-minutes", "0.1"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 process(es)" in first.stdout
    stopped = torch.load(train_diffusion.latest_full_state(tmp_path / "two/checkpoints"), weights_only=False)
    assert 3 <= stopped["step"] < 100000
    one, two = lr_by_step(tmp_path / "one"), lr_by_step(tmp_path / "two")
    common_steps = sorted(set(one) & set(two))
    assert len(common_steps) >= 3
    assert [two[k] for k in common_steps] == [one[k] for k in common_steps]
    second = launch_two_processes(common + ["--out", str(tmp_path / "two"), "--resume", "latest",
                                            "--max-steps", str(stopped["step"] + 1)])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout
    assert train_diffusion.latest_full_state(tmp_path / "two/checkpoints").name == \
        f"step_{stopped['step'] + 1:07d}.pt"


def assert_one_step_from(init: Path, run: Path, skip: tuple[str, ...] = ()) -> None:
    """The run's first checkpoint is one small optimiser step away from `init`'s weights, not a random network
    (the weights named in `skip` aside)."""
    state, _, _ = load_slim(init)
    after = torch.load(run / "checkpoints" / "step_0000001.pt", weights_only=False)["model"]
    diffs = [float((after[k].float() - v).abs().max()) for k, v in state.items() if k not in skip]
    assert max(diffs) < 0.05


def test_init_from_slim_checkpoint_starts_from_its_weights(trained_tiny, tmp_path):
    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    run = tmp_path / "run"
    assert train_diffusion.main(["--config", TINY, "--out", str(run), "--data-root", str(tmp_path / "data"),
                                 "--init", str(trained_tiny / "last.safetensors"), "--max-steps", "1"]) == 0
    assert_one_step_from(trained_tiny / "last.safetensors", run)


def test_diffusion_warm_started_from_a_regressor(tmp_path):
    """The released CT recipe: train the network as a regressor, then go on with the diffusion objective."""
    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    common = ["--config", TINY, "--data-root", str(tmp_path / "data"), "--max-steps", "1"]
    assert train_diffusion.main(common + ["--out", str(tmp_path / "reg"), "--set", "diffusion.objective=regress",
                                          "--set", "sample.sampler=regressor", "--set", "sample.steps=1"]) == 0
    regressor = tmp_path / "reg" / "last.safetensors"
    assert load_slim(regressor)[1]["diffusion"]["objective"] == "regress"
    assert train_diffusion.main(common + ["--out", str(tmp_path / "diff"), "--init", str(regressor)]) == 0
    assert load_slim(tmp_path / "diff" / "last.safetensors")[1]["diffusion"]["objective"] == "diffusion"
    assert_one_step_from(regressor, tmp_path / "diff", skip=("conv_in.weight",))


def test_a_regressor_warm_start_computes_the_regressor_at_t_max_for_any_noisy_input(tmp_path):
    """Warm-started from a regressor (trained at t = T-1 on x_t = 0, so its weights on x_t are untrained), the
    diffusion model's prediction at t = T-1 is the regressor's for any x_t: its one-step sampler starts as the
    regressor; every other weight is the regressor's."""
    from argparse import Namespace

    from diffusion.config import apply_overrides, load_config
    from diffusion.inference import build_denoiser

    regressor_cfg = apply_overrides(load_config(TINY), ["diffusion.objective=regress", "sample.sampler=regressor",
                                                        "sample.steps=1", "train.channels_last=false"])
    regressor = build_denoiser(regressor_cfg).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a random init's weights on x_t are far from zero: a test that can fail
        for p in regressor.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "reg.safetensors"
    save_slim(path, regressor.net.state_dict(), regressor_cfg)
    regressor.net.load_state_dict(load_slim(path)[0])  # as saved (slim weights are rounded)
    config = apply_overrides(load_config(TINY), ["train.channels_last=false"])
    warm = train_diffusion.build_model(config, Namespace(init=str(path), resume=None), None).eval()
    out_ch = warm.net.config.out_channels
    n, size = 2, config["data"]["crop_size"]
    cond = torch.randn(n, warm.net.config.in_channels - out_ch, size, size)
    t = torch.full((n,), warm.num_train_timesteps - 1)
    labels = torch.tensor([1, 3]) if warm.net.config.num_class_embeds else None
    with torch.no_grad():
        expected = regressor(torch.zeros(n, out_ch, size, size), t, cond, labels)[0]
        for x_t in (torch.zeros(n, out_ch, size, size), torch.randn(n, out_ch, size, size)):
            assert torch.allclose(warm(x_t, t, cond, labels)[0], expected, atol=1e-5)
    reg_state = regressor.net.state_dict()
    for key, value in warm.net.state_dict().items():
        if key != "conv_in.weight":
            assert torch.equal(value, reg_state[key]), key
    assert torch.equal(warm.net.conv_in.weight[:, out_ch:], reg_state["conv_in.weight"][:, out_ch:])
    assert not warm.net.conv_in.weight[:, :out_ch].any()


def test_a_training_set_smaller_than_one_batch_is_a_clear_error(tmp_path):
    import pytest

    from diffusion.errors import UserError

    write_ct_layout(tmp_path / "data" / "ct-inpainting", patients=2, slices=1)  # 1 training slice, batch 4
    with pytest.raises(UserError, match="fewer than one batch"):
        train_diffusion.main(["--config", TINY, "--out", str(tmp_path / "r"), "--data-root", str(tmp_path / "data")])


def test_bf16_falls_back_to_fp32_where_it_has_no_fast_kernels(tmp_path, monkeypatch):
    """On a CPU without bf16 kernels (AVX2 only) emulated bf16 trained 6x slower than fp32: training, validation
    and inference then run in fp32, say so once, and the run's config.yaml records it; where the kernels exist they
    stay in bf16."""
    import warnings

    import yaml
    from accelerate.state import AcceleratorState

    from diffusion import inference
    from diffusion.inference import Predictor

    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    ran = {}
    for fast in (True, False):
        monkeypatch.setattr(inference, "cpu_has_fast_bf16", lambda fast=fast: fast)
        monkeypatch.setattr(inference, "_warned_bf16", set())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = tmp_path / f"run_{fast}"
            AcceleratorState._reset_state(reset_partial_state=True)  # one process, two precisions
            assert train_diffusion.main(["--config", TINY, "--out", str(run), "--data-root", str(tmp_path / "data"),
                                         "--max-steps", "1"]) == 0
            predictor = Predictor.from_checkpoint(run / "last.safetensors")
        said = [str(w.message) for w in caught if "bf16" in str(w.message)]
        ran[fast] = (yaml.safe_load((run / "config.yaml").read_text())["train"]["mixed_precision"], predictor.bf16,
                     len(said))
    AcceleratorState._reset_state(reset_partial_state=True)  # later tests start on this machine's precision
    assert ran[True] == ("bf16", True, 0)
    assert ran[False] == ("no", False, 1), ran[False]


def test_init_grows_self_attention_as_the_identity(trained_tiny, tmp_path):
    """--init into a network with self-attention at more levels (issue 14.3's lever): the checkpoint's weights load,
    each new block starts as the identity, so the grown network computes what the checkpoint's did; a network that
    differs otherwise is still refused."""
    import pytest

    from diffusion.errors import UserError
    from diffusion.inference import build_denoiser
    from diffusion.network import grow_into

    state, config, _ = load_slim(trained_tiny / "last.safetensors")
    grown_config = {**config, "model": {**config["model"], "attention_levels": [1]}}
    old, grown = build_denoiser(config).net.eval(), build_denoiser(grown_config).net.eval()
    old.load_state_dict(state)
    added = grow_into(grown, state)
    assert added == ["down_blocks.1.attentions.0", "up_blocks.0.attentions.0", "up_blocks.0.attentions.1"]
    x = torch.randn(2, old.config.in_channels, 32, 32)
    t, levels = torch.tensor([0, 700]), torch.tensor([1, 3])
    with torch.no_grad():
        assert torch.allclose(old(x, t, class_labels=levels).sample, grown(x, t, class_labels=levels).sample,
                              atol=1e-5)

    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    common = ["--config", TINY, "--data-root", str(tmp_path / "data"), "--init", str(trained_tiny / "last.safetensors"),
              "--max-steps", "1"]
    assert train_diffusion.main(common + ["--out", str(tmp_path / "grown"), "--set", "model.attention_levels=[1]"]) == 0
    assert_one_step_from(trained_tiny / "last.safetensors", tmp_path / "grown")
    after = torch.load(tmp_path / "grown/checkpoints/step_0000001.pt", weights_only=False)["model"]
    assert float(after["down_blocks.1.attentions.0.to_out.0.weight"].abs().max()) < 0.05
    with pytest.raises(UserError, match="model config differs"):
        train_diffusion.main(common + ["--out", str(tmp_path / "wider"), "--set", "model.block_out_channels=[8,32]"])


@pytest.mark.parametrize("objective", ["diffusion", "regress"])
def test_a_grown_network_computes_what_the_smaller_one_did(trained_tiny, objective):
    """Issue #28.4: one more layer per block (and self-attention at a new level) added to a trained network, every new
    block starting as the identity: before any training, the grown denoiser's loss on a fixed batch and its x0
    estimate equal the smaller one's, for the diffusion and the regression objective."""
    from diffusion.inference import build_denoiser
    from diffusion.network import grow_into

    state, config, _ = load_slim(trained_tiny / "last.safetensors")
    config = {**config, "diffusion": {**config["diffusion"], "objective": objective}}
    grown_config = {**config, "model": {**config["model"], "layers_per_block": 2, "attention_levels": [1]}}
    assert config["model"]["layers_per_block"] == 1
    small, grown = build_denoiser(config).eval(), build_denoiser(grown_config).eval()
    small.net.load_state_dict(state)
    added = grow_into(grown.net, state, old_layers=1)
    assert "down_blocks.0.resnets.1" in added and "up_blocks.0.resnets.1" in added
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in small.parameters())
    torch.manual_seed(0)
    x0 = torch.rand(3, 1, 32, 32) * 2 - 1
    cond = torch.randn(3, small.net.config.in_channels - 1, 32, 32)
    labels, weight = torch.tensor([1, 3, 5]), torch.ones(3, 1, 32, 32)
    t, noise = torch.tensor([0, 400, 999]), torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        losses = [d.loss(x0, cond, labels, weight, t=t, noise=noise) for d in (small, grown)]
        estimates = [d(d.add_noise(x0, noise, t), t, cond, labels)[0] for d in (small, grown)]
    assert torch.allclose(*losses, atol=1e-5) and torch.allclose(*estimates, atol=1e-5)
    grown.net.load_state_dict(build_denoiser(grown_config).net.state_dict())  # the same network, fresh: differs
    with torch.no_grad():
        assert not torch.allclose(losses[0], grown.loss(x0, cond, labels, weight, t=t, noise=noise), atol=1e-3)


def test_init_grows_layers_per_block(trained_tiny, tmp_path):
    """`--init` with more model.layers_per_block trains on from the smaller network's weights."""
    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    assert train_diffusion.main(["--config", TINY, "--data-root", str(tmp_path / "data"), "--init",
                                 str(trained_tiny / "last.safetensors"), "--max-steps", "1", "--out",
                                 str(tmp_path / "deeper"), "--set", "model.layers_per_block=2"]) == 0
    after = torch.load(tmp_path / "deeper/checkpoints/step_0000001.pt", weights_only=False)["model"]
    assert "down_blocks.0.resnets.1.conv2.weight" in after
    assert float(after["down_blocks.0.resnets.1.conv2.weight"].abs().max()) < 0.05  # one step from zero


def test_train_compile_is_not_honoured_and_the_run_trains_what_an_eager_run_does(trained_tiny, tmp_path):
    """torch.compile gave most of the UNet zero gradients in training (2026-12-07): `train.compile: true` now warns,
    trains eagerly and records `compile: false`, so the run's weights are exactly those of the same run without it
    (a compiled run's differ: its deeper blocks never move)."""
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="train.compile is ignored"):
        assert train_diffusion.main(["--config", TINY, "--out", str(run), "--data-root",
                                     str(trained_tiny.parent / "data"), "--set", "train.compile=true"]) == 0
    compiled, _, _ = load_slim(run / "last.safetensors")
    eager, _, _ = load_slim(trained_tiny / "last.safetensors")
    assert compiled.keys() == eager.keys() and all(torch.equal(compiled[k], eager[k]) for k in eager)
    assert "compile: false" in (run / "config.yaml").read_text()
