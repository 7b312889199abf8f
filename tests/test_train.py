"""train_diffusion.py end to end on tiny generated data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import train_diffusion
from diffusion.checkpoint import load_slim
from tests.conftest import REPO, write_ct_layout

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
    _, config, extra = load_slim(run / "last.safetensors", expected_task="ct")
    assert config["model"]["block_out_channels"] == [8, 16] and extra["step"] == 2


def test_resume_latest_continues_from_the_last_step(tmp_path):
    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    args = ["--config", TINY, "--out", str(tmp_path / "run"), "--data-root", str(tmp_path / "data")]
    assert train_diffusion.main(args + ["--max-steps", "2"]) == 0
    before = torch.load(tmp_path / "run/checkpoints/step_0000002.pt", weights_only=False)
    assert train_diffusion.main(args + ["--max-steps", "3", "--resume", "latest"]) == 0
    after = torch.load(tmp_path / "run/checkpoints/step_0000003.pt", weights_only=False)
    assert after["step"] == 3 and before["step"] == 2
    steps = [json.loads(x)["step"] for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert steps.count(3) == 2 and steps.count(1) == 2  # one loss row and one validation row per step


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    out = subprocess.run([sys.executable, "train_diffusion.py", "--config", TINY, "--out", str(tmp_path / "r"),
                          "--data-root", str(tmp_path / "data"), "--resume", "latest"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("error: --resume latest")
    assert "Traceback" not in out.stderr


def test_accelerate_two_cpu_processes_then_resume(tmp_path):
    """Two CPU processes train with DDP over gloo, then resume.

    accelerate 1.x starts several CPU processes only through mpirun for `--cpu`; its torchrun launcher
    (`--multi_gpu`) starts them without MPI and train_diffusion.py then joins them over gloo (no CUDA)."""
    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "train_diffusion.py", "--config", TINY, "--out", str(tmp_path / "run"), "--data-root", str(tmp_path / "data")]
    first = subprocess.run(base + ["--max-steps", "2"], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "2 process(es)" in first.stdout
    second = subprocess.run(base + ["--max-steps", "3", "--resume", "latest"], cwd=REPO, capture_output=True,
                            text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed from" in second.stdout
    state = torch.load(tmp_path / "run/checkpoints/step_0000003.pt", weights_only=False)
    assert state["step"] == 3


def assert_one_step_from(init: Path, run: Path) -> None:
    """The run's first checkpoint is one small optimiser step away from `init`'s weights, not a random network."""
    state, _, _ = load_slim(init)
    after = torch.load(run / "checkpoints" / "step_0000001.pt", weights_only=False)["model"]
    diffs = [float((after[k].float() - v).abs().max()) for k, v in state.items()]
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
    assert_one_step_from(regressor, tmp_path / "diff")


def test_a_training_set_smaller_than_one_batch_is_a_clear_error(tmp_path):
    import pytest

    from diffusion.errors import UserError

    write_ct_layout(tmp_path / "data" / "ct-inpainting", patients=2, slices=1)  # 1 training slice, batch 4
    with pytest.raises(UserError, match="fewer than one batch"):
        train_diffusion.main(["--config", TINY, "--out", str(tmp_path / "r"), "--data-root", str(tmp_path / "data")])
