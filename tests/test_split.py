"""One meaning of --split in every entry point: the same default (all), and a line saying what was selected."""
import argparse
import subprocess
import sys

import pytest

from diffusion.config import DEFAULTS
from diffusion.evaluate import select_cases
from diffusion.tasks import get_task
from tests.conftest import REPO, write_ct_layout, write_tumor_layout

TOOLS = ["infer", "eval.score", "eval.compare", "eval.ablate"]


@pytest.mark.parametrize("module", TOOLS)
def test_every_tool_defaults_to_all(module, monkeypatch):
    """Pointed at a folder of new patients, a tool scores all of them unless told otherwise."""
    import importlib

    seen = {}
    original = argparse.ArgumentParser.parse_args

    def spy(self, args=None, namespace=None):
        parsed = original(self, args, namespace)
        seen["split"] = parsed.split
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)
    required = {"infer": ["--task", "ct"], "eval.score": ["--task", "ct", "--pred", "x", "--out", "y"],
                "eval.compare": ["--task", "ct", "--variant", "name=a", "--out", "x"],
                "eval.ablate": ["--task", "ct", "--samplers", "ddim:1", "--out", "x"]}[module]
    with pytest.raises(SystemExit):
        importlib.import_module(module).main(required)
    assert seen["split"] == "all"


def test_calibrate_asks_for_the_split():
    out = subprocess.run([sys.executable, "-m", "eval.calibrate", "--checkpoint", "x", "--out", "y"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "--split" in out.stderr


def test_the_selection_line_says_how_many_of_how_many_and_why(tmp_path):
    task = get_task("ct")
    root = write_ct_layout(tmp_path / "ct-inpainting", patients=4, slices=2)
    split = {**DEFAULTS["data"], "val_patients": 1, "split_seed": 0, "calib_patients": 1}  # a checkpoint's data section
    cases, line = select_cases(task, root, split, "all")
    assert len(cases) == 8 and line.startswith("selected 8 of 8 ct cases (4 of 4 patients)") and "split all" in line
    cases, line = select_cases(task, root, split, "val", whose="ckpt.safetensors")
    assert len(cases) == 2 and line.startswith("selected 2 of 8 ct cases (1 of 4 patients)")
    assert "the val side of ckpt.safetensors's patient-level split" in line
    cases, line = select_cases(task, root, split, "all", limit=3)
    assert len(cases) == 3 and "--limit 3" in line


def test_the_selection_line_counts_the_controls_left_out(tmp_path):
    root = write_tumor_layout(tmp_path / "tumor-segmentation", patients=3, controls=2)
    _, line = select_cases(get_task("tumor"), root, None, "all")
    assert line.startswith("selected 3 of 3 tumor cases") and "2 controls not included (--include-controls)" in line


@pytest.mark.parametrize("side", ["val", "calib"])
def test_a_limit_on_held_out_patients_spreads_over_them(tmp_path, side):
    """--limit 3 on 3 held-out patients of 4 slices each: one slice from each, not the first patient's three."""
    task = get_task("ct")
    root = write_ct_layout(tmp_path / "ct-inpainting", patients=8, slices=4)
    split = {**DEFAULTS["data"], "val_patients": 3, "split_seed": 0, "calib_patients": 3}
    cases, line = select_cases(task, root, split, side, limit=3)
    assert len(cases) == 3 and len({c.patient for c in cases}) == 3, line
