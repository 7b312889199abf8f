"""infer.py end to end on generated slices, and its one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest

import infer
from diffusion.checkpoint import load_slim, save_slim
from diffusion.data.images import read_png
from diffusion.tasks.ct.layout import load_ct_slices
from tests.conftest import REPO, write_ct_layout


def run_cli(*args):
    return subprocess.run([sys.executable, "infer.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_infer_writes_predictions_overview_and_metrics(trained_tiny, tmp_path):
    write_ct_layout(tmp_path / "data" / "ct-inpainting", patients=2, slices=2, seed=5)
    out = tmp_path / "out"
    assert infer.main(["--task", "ct", "--data-root", str(tmp_path / "data"), "--checkpoint",
                       str(trained_tiny / "last.safetensors"), "--out", str(out), "--limit", "3",
                       "--sampler", "ddim", "--steps", "2", "--ensemble", "2", "--seed", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "ct" and metrics["n"] == 3 and metrics["ensemble"] == 2 and metrics["steps"] == 2
    assert set(metrics["seconds_per_image"]) == {"mean", "median", "p95", "max"}
    assert len(metrics["cases"]) == 3 and metrics["mae"] == pytest.approx(np.mean([c["mae"] for c in metrics["cases"]]))
    assert (out / "overview.png").is_file()
    slices = load_ct_slices(tmp_path / "data" / "ct-inpainting", progress=False)
    for i in range(3):
        pred = read_png(out / "reconstructed" / f"reconstructed_{slices.ids[i]}.png")
        assert pred.shape == (256, 256) and pred.dtype == np.uint8
        known = slices.missing_mask[i] == 0
        assert np.array_equal(pred[known], slices.corrupted[i][known])  # known pixels kept exactly
        assert np.all(pred[slices.tissue[i] == 0] == 0)                 # outside the body is 0


def test_infer_without_ground_truth_writes_predictions_and_timings(trained_tiny, tmp_path):
    root = write_ct_layout(tmp_path / "data" / "ct-inpainting", patients=1, slices=2)
    for f in (root / "ct").iterdir():
        f.unlink()
    (root / "ct").rmdir()
    out = tmp_path / "out"
    assert infer.main(["--task", "ct", "--data-root", str(root), "--checkpoint", str(trained_tiny / "last.safetensors"),
                       "--out", str(out), "--sampler", "repaint", "--steps", "4", "--jumps", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "mae" not in metrics and metrics["n"] == 2 and metrics["sampler"] == "repaint:4x2"
    assert len(list((out / "reconstructed").glob("*.png"))) == 2


def test_same_seed_same_result(trained_tiny, tmp_path):
    write_ct_layout(tmp_path / "data" / "ct-inpainting", patients=1, slices=1)
    results = []
    for name in ("a", "b"):
        infer.main(["--task", "ct", "--data-root", str(tmp_path / "data"), "--checkpoint",
                    str(trained_tiny / "last.safetensors"), "--out", str(tmp_path / name), "--sampler", "ddpm",
                    "--steps", "3", "--seed", "4"])
        results.append(read_png(next((tmp_path / name / "reconstructed").glob("*.png"))))
    assert np.array_equal(*results)


def test_bad_inputs_give_one_clear_line(trained_tiny, tmp_path):
    ckpt = str(trained_tiny / "last.safetensors")
    root = write_ct_layout(tmp_path / "data" / "ct-inpainting", patients=1, slices=1)
    state, config, _ = load_slim(ckpt)
    save_slim(tmp_path / "tumor.safetensors", state, {**config, "task": "tumor"})
    (root / "mask" / "mask_000_0.png").write_bytes(b"not a png")
    cases = {
        "does not exist": ["--data-root", str(tmp_path / "nowhere"), "--checkpoint", ckpt],
        "mask_000_0.png: not a readable image": ["--data-root", str(tmp_path / "data"), "--checkpoint", ckpt],
        "is for task 'tumor', not 'ct'": ["--data-root", str(tmp_path / "data"),
                                          "--checkpoint", str(tmp_path / "tumor.safetensors")],
        "unknown sampler 'warp'": ["--data-root", str(tmp_path / "data"), "--checkpoint", ckpt, "--sampler", "warp"],
    }
    for message, args in cases.items():
        result = run_cli("--task", "ct", "--out", str(tmp_path / "o"), *args)
        assert result.returncode == 2, (message, result.stderr[-500:])
        lines = result.stderr.strip().splitlines()
        assert message in lines[-1] and lines[-1].startswith("error:"), (message, lines[-1])
        assert "Traceback" not in result.stderr


def test_ablation_harness_writes_one_row_per_setting(trained_tiny, tmp_path):
    import csv

    from eval import ablate

    write_ct_layout(tmp_path / "data" / "ct-inpainting", patients=2, slices=1)
    assert ablate.main(["--task", "ct", "--data-root", str(tmp_path / "data"), "--checkpoint",
                        str(trained_tiny / "last.safetensors"), "--samplers", "ddim:1,ddpm:3,repaint:4x2",
                        "--ensemble", "1,2", "--split", "all", "--out", str(tmp_path / "abl")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "abl" / "results.csv")))
    assert list(rows[0]) == ["sampler", "steps", "nfe", "ensemble", "mae", "seconds_per_image"]
    assert [(r["sampler"], r["ensemble"]) for r in rows] == [
        ("ddim:1", "1"), ("ddim:1", "2"), ("ddpm:3", "1"), ("ddpm:3", "2"), ("repaint:4x2", "1"), ("repaint:4x2", "2")]
    assert int(rows[4]["nfe"]) > 4 and all(float(r["mae"]) > 0 for r in rows)
    assert (tmp_path / "abl" / "pareto.png").stat().st_size > 0


def test_a_sampler_name_picks_the_released_checkpoint_that_can_run_it(tmp_path):
    import torch

    from diffusion.inference import released_for_sampler

    def save(name, task="ct", objective="diffusion", student_steps=0, sampler="ddim"):
        config = {"task": task, "diffusion": {"objective": objective}, "distill": {"student_steps": student_steps},
                  "sample": {"sampler": sampler}}
        save_slim(tmp_path / name, {"w": torch.zeros(1)}, config)

    save("ct_inpaint.safetensors")
    save("ct_inpaint_distilled.safetensors", student_steps=1, sampler="distilled")
    save("ct_inpaint_regressor.safetensors", objective="regress", sampler="regressor")
    pick = {s: released_for_sampler("ct", s, tmp_path).name for s in (None, "ddim", "repaint", "distilled", "regressor")}
    assert pick == {None: "ct_inpaint.safetensors", "ddim": "ct_inpaint.safetensors",
                    "repaint": "ct_inpaint.safetensors", "distilled": "ct_inpaint_distilled.safetensors",
                    "regressor": "ct_inpaint_regressor.safetensors"}
    # a task released as a regressor: diffusion samplers go to its diffusion model, nothing can run `distilled`
    save("tumor_seg.safetensors", task="tumor", objective="regress", sampler="regressor")
    save("tumor_seg_diffusion.safetensors", task="tumor")
    assert released_for_sampler("tumor", "ddim", tmp_path).name == "tumor_seg_diffusion.safetensors"
    assert released_for_sampler("tumor", None, tmp_path).name == "tumor_seg.safetensors"
    assert released_for_sampler("tumor", "distilled", tmp_path).name == "tumor_seg.safetensors"  # check_spec refuses
