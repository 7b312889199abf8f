"""The one task interface: layers point one way, a third task is one module, scoring is its own pass."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffusion.data.images import read_png, write_png
from diffusion.tasks import BUILTIN, TASKS, get_task
from tests.conftest import REPO

BLOCK_ENTRY_POINTS = r'''
import importlib, pkgutil, sys
BLOCKED = {"eval", "infer", "serve", "train_diffusion"}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"the library imported {name}")
sys.meta_path.insert(0, Blocker())
import diffusion, samplers
names = []
for package in (diffusion, samplers):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
        names.append(info.name)
from diffusion.tasks import get_task, task_names
for name in task_names():
    get_task(name).encode
print(len(names))
'''


def test_the_library_imports_no_entry_point_and_nothing_from_eval():
    """Every module of diffusion/ and samplers/ (and every registered task) imports with eval/ and the top-level
    scripts blocked: dependencies point from the entry points to the library, never back."""
    done = subprocess.run([sys.executable, "-c", BLOCK_ENTRY_POINTS], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) >= 20


def test_entry_points_contain_no_task_names():
    for script in ["train_diffusion.py", "infer.py", "serve.py", "eval/ablate.py", "eval/score.py",
                   "diffusion/training.py", "diffusion/evaluate.py", "diffusion/inference.py"]:
        text = (REPO / script).read_text()
        for name in ('"ct"', '"tumor"', "'ct'", "'tumor'"):
            assert f"== {name}" not in text and f"{name}:" not in text, (script, name)


# --- a toy third task: one package (written by the test) plus one registry line --------------------------------

TOY_PACKAGE = r'''
"""Denoise 32x32 grey images: noisy/noisy_PPP_S.png -> clean/clean_PPP_S.png, scored by MAE."""
from dataclasses import dataclass
from pathlib import Path

import torch

from diffusion.data.images import read_png
from diffusion.metrics import image_mae
from diffusion.tasks.base import Case, Encoded, Example, Layout, Prediction, Task
from samplers.ensemble import reduce_ensemble


class ToyLayout(Layout):
    folder = "toy-denoise"
    marker = "noisy"

    def list_cases(self, root, include_extra=False):
        ids = sorted(p.stem[len("noisy_"):] for p in (Path(root) / "noisy").glob("noisy_*.png"))
        return [Case(i, i.split("_")[0]) for i in ids]

    def has_truth(self, root, cases):
        return (Path(root) / "clean").is_dir()

    def read_case(self, root, case, with_truth):
        noisy = read_png(Path(root) / "noisy" / f"noisy_{case.id}.png")
        truth = read_png(Path(root) / "clean" / f"clean_{case.id}.png") if with_truth else None
        return Example(case, {"noisy": noisy}, truth)


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, key):
        _, index = key if isinstance(key, tuple) else (0, key)
        noisy, clean = self.pairs[index]
        return {"noisy": torch.from_numpy(noisy), "clean": torch.from_numpy(clean)}


@dataclass(frozen=True)
class ToyDenoise(Task):
    name: str = "toy"
    cond_channels: int = 1
    layout = ToyLayout()

    def training_dataset(self, root, cases, config, progress):
        return ToyDataset([(e.inputs["noisy"], e.truth) for e in (self.layout.read_case(root, c, True) for c in cases)])

    def training_batch(self, batch):
        target = batch["clean"].float().unsqueeze(1) / 127.5 - 1
        cond = batch["noisy"].float().unsqueeze(1) / 127.5 - 1
        return target, cond, None, torch.ones_like(target)

    def encode(self, inputs, multiple):
        return Encoded(torch.from_numpy(inputs["noisy"]).float()[None, None] / 127.5 - 1)

    def decode(self, x0, inputs, sample):
        median, spread = reduce_ensemble((x0[:, 0].clamp(-1, 1) + 1) * 127.5, "median")
        return Prediction(image=median.numpy(), uncertainty=spread.numpy())

    def score(self, image, truth):
        return {"mae": image_mae(image, truth)}


TASK = ToyDenoise()
'''


@pytest.fixture
def toy_task(tmp_path_factory, monkeypatch):
    """The toy task as a package of its own on the path, and its one registry line."""
    packages = tmp_path_factory.mktemp("packages")
    (packages / "toy_task").mkdir()
    (packages / "toy_task" / "__init__.py").write_text(TOY_PACKAGE)
    monkeypatch.syspath_prepend(str(packages))
    monkeypatch.setitem(BUILTIN, "toy", "toy_task")  # the registry line
    yield get_task("toy")
    TASKS.pop("toy", None)
    sys.modules.pop("toy_task", None)


def write_toy_data(root: Path, patients: int = 3, images: int = 2) -> None:
    rng = np.random.default_rng(0)
    for p in range(patients):
        for s in range(images):
            clean = np.clip(100 + 40 * np.sin(np.arange(32) / (3 + p + s))[None] + np.zeros((32, 1)), 0, 255)
            noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255)
            write_png(root / "noisy" / f"noisy_{p:03d}_{s}.png", noisy.astype(np.uint8))
            write_png(root / "clean" / f"clean_{p:03d}_{s}.png", clean.astype(np.uint8))


def test_a_third_task_trains_and_infers_through_the_registry_alone(toy_task, tmp_path):
    """Registered in this test only: train_diffusion.py trains it for two steps and infer.py predicts and scores
    it, with no entry point touched."""
    import infer
    import train_diffusion

    write_toy_data(tmp_path / "data" / "toy-denoise")
    config = tmp_path / "toy.yaml"
    config.write_text("task: toy\ndata: {val_patients: 1}\n"
                      "model: {block_out_channels: [8, 16], norm_num_groups: 4, mid_attention: false}\n"
                      "train: {batch_size: 2, warmup_steps: 1, max_steps: 2, log_every: 1, val_every: 1, "
                      "checkpoint_every: 1, val_slices: 2}\n"
                      "sample: {sampler: ddim, steps: 2, ensemble: 2}\n")
    run = tmp_path / "run"
    assert train_diffusion.main(["--config", str(config), "--out", str(run),
                                 "--data-root", str(tmp_path / "data")]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_mae" in r] == [1, 2]
    out = tmp_path / "out"
    assert infer.main(["--task", "toy", "--checkpoint", str(run / "last.safetensors"), "--data-root",
                       str(tmp_path / "data"), "--out", str(out), "--split", "val"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "toy" and metrics["n"] == 2 and metrics["mae"] > 0
    assert len(list((out / "predictions").glob("*.png"))) == 2 and (out / "overview.png").is_file()
    assert abs(metrics["mae"] - [r["val_mae"] for r in rows if "val_mae" in r][-1]) < 1e-6


# --- eval.score ------------------------------------------------------------------------------------------------

def test_eval_score_reproduces_infer_exactly(trained_tiny, trained_tumor_tiny, tmp_path):
    import infer
    from eval import score

    for task, run in (("ct", trained_tiny), ("tumor", trained_tumor_tiny)):
        data = run.parent / "data"
        out = tmp_path / f"infer_{task}"
        assert infer.main(["--task", task, "--checkpoint", str(run / "last.safetensors"), "--data-root", str(data),
                           "--out", str(out), "--limit", "3"]) == 0
        inferred = json.loads((out / "metrics.json").read_text())
        assert score.main(["--task", task, "--pred", str(out), "--data-root", str(data), "--limit", "3",
                           "--out", str(tmp_path / f"score_{task}")]) == 0
        summary = json.loads((tmp_path / f"score_{task}" / "summary.json").read_text())
        cases = json.loads((tmp_path / f"score_{task}" / "cases.json").read_text())
        metric = get_task(task).metric
        assert summary[metric] == inferred[metric] and summary["n"] == inferred["n"] == 3
        assert [c[metric] for c in cases] == [c[metric] for c in inferred["cases"]]


def test_run_cases_gives_each_case_the_ensemble_of_its_size(trained_tumor_tiny):
    """Without an explicit ensemble each case is sampled (and recorded) with the checkpoint's size rule; an explicit
    one applies to every case."""
    from diffusion.evaluate import run_cases
    from diffusion.inference import load_predictor

    task = get_task("tumor")
    root = trained_tumor_tiny.parent / "data" / "tumor-segmentation"
    cases = task.layout.list_cases(root)
    rows = [read_png(root / "patients" / "imgs" / f"{c.id}.png").shape[0] for c in cases]
    limit = 400 * sorted(rows)[len(rows) // 2]                                     # the middle image's size
    predictor = load_predictor("tumor", trained_tumor_tiny / "last.safetensors")
    rule = predictor.with_sample(ensemble=2, ensemble_max_pixels=limit)
    metrics = run_cases(task, rule, root, cases, rule.default_spec()[0], None, progress=False)
    assert [r["ensemble"] for r in metrics["cases"]] == [1 if 400 * h > limit else 2 for h in rows]
    assert 1 in [r["ensemble"] for r in metrics["cases"]] and metrics["ensemble_max_pixels"] == limit
    metrics = run_cases(task, rule, root, cases, rule.default_spec()[0], 2, progress=False)
    assert [r["ensemble"] for r in metrics["cases"]] == [2] * len(cases) and "ensemble_max_pixels" not in metrics


def test_eval_score_scores_hand_made_predictions(ct_root, tumor_root, tmp_path):
    """Predictions made by another method: the CT truth itself (MAE 0) and an all-black slice (MAE = the mean
    grey level); the tumor label itself (Dice 1) and an empty mask (Dice 0)."""
    from eval import score

    ct = ct_root / "ct-inpainting"
    ids = sorted(p.stem[len("ct_"):] for p in (ct / "ct").glob("ct_*.png"))[:2]
    truth = read_png(ct / "ct" / f"ct_{ids[1]}.png")
    write_png(tmp_path / "ctpred" / "reconstructed" / f"reconstructed_{ids[0]}.png",
              read_png(ct / "ct" / f"ct_{ids[0]}.png"))
    write_png(tmp_path / "ctpred" / "reconstructed" / f"reconstructed_{ids[1]}.png", np.zeros_like(truth))
    assert score.main(["--task", "ct", "--pred", str(tmp_path / "ctpred"), "--data-root", str(ct_root),
                       "--limit", "2", "--out", str(tmp_path / "s_ct")]) == 0
    cases = json.loads((tmp_path / "s_ct" / "cases.json").read_text())
    assert cases[0]["mae"] == 0 and cases[1]["mae"] == pytest.approx(truth.mean())

    tumor = tumor_root / "tumor-segmentation"
    labels = sorted((tumor / "patients" / "labels").glob("segmentation_*.png"))
    pred = tmp_path / "tpred" / "predictions"
    for i, label in enumerate(labels):
        image = read_png(label, grey=False)
        write_png(pred / label.name, image if i == 0 else np.zeros_like(image))
    assert score.main(["--task", "tumor", "--pred", str(tmp_path / "tpred"), "--data-root", str(tumor_root),
                       "--out", str(tmp_path / "s_tumor")]) == 0
    summary = json.loads((tmp_path / "s_tumor" / "summary.json").read_text())
    cases = json.loads((tmp_path / "s_tumor" / "cases.json").read_text())
    assert [c["dice"] for c in cases] == [1.0] + [0.0] * (len(labels) - 1)
    assert summary["dice"] == pytest.approx(1 / len(labels))
    (pred / labels[-1].name).unlink()
    done = subprocess.run([sys.executable, "-m", "eval.score", "--task", "tumor", "--pred", str(tmp_path / "tpred"),
                           "--data-root", str(tumor_root), "--out", str(tmp_path / "s2")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and labels[-1].name in done.stderr and "Traceback" not in done.stderr


def test_every_config_key_the_code_reads_has_a_default_and_unknown_keys_fail(tmp_path):
    from diffusion.config import apply_overrides, load_config
    from diffusion.errors import UserError
    from diffusion.inference import build_denoiser

    config = apply_overrides(load_config(REPO / "configs" / "ct_tiny.yaml"),
                             ["model.dropout=0.1", "model.attention_head_dim=4", "sample.jumps=3",
                              "train.compile=false"])
    net = build_denoiser(config).net
    assert net.config.dropout == 0.1 and net.config.attention_head_dim == 4
    with pytest.raises(UserError, match="unknown key 'model.dropuot'"):
        apply_overrides(config, ["model.dropuot=0.1"])


def test_console_entry_points_run_the_scripts():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) >= {"dmiai-train", "dmiai-infer", "dmiai-serve", "dmiai-ablate", "dmiai-score", "dmiai-compare"}
    import importlib

    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))
