"""eval.compare: several models and settings on the same cases, errors over patients, paired differences."""
import csv
import json

import numpy as np
import pytest

import infer
from diffusion.checkpoint import load_slim, save_slim
from diffusion.errors import UserError
from diffusion.inference import load_predictor
from diffusion.metrics import patient_mean_se
from eval import compare
from tests.conftest import write_ct_layout


def test_standard_error_takes_the_patient_as_the_unit():
    # one case per patient: the usual std / sqrt(n)
    values = np.array([0.2, 0.5, 0.9, 0.4])
    mean, se = patient_mean_se(values, ["a", "b", "c", "d"])
    assert mean == pytest.approx(values.mean()) and se == pytest.approx(values.std(ddof=1) / 2)
    # two patients of four identical slices each: two observations, not eight (cluster-robust: 1.0, naive 0.38)
    mean, se = patient_mean_se([1, 1, 1, 1, 3, 3, 3, 3], list("aaaabbbb"))
    assert mean == 2 and se == pytest.approx(1.0)
    assert np.isnan(patient_mean_se([1.0, 2.0], ["a", "a"])[1])


def test_variant_parsing_and_its_errors():
    v = compare.parse_variant("name=four steps,checkpoint=x.safetensors,sampler=ddim:4,ensemble=8,flip=0,"
                              "threshold=0.3,min_component=25")
    assert v["name"] == "four steps" and v["checkpoint"] == "x.safetensors"
    assert v["settings"] == {"sampler": "ddim", "steps": 4, "jumps": 1, "ensemble": 8, "flip": False,
                             "threshold": 0.3, "min_component": 25}
    with pytest.raises(UserError, match="unknown key 'ensembel'"):
        compare.parse_variant("name=a,ensembel=4")
    with pytest.raises(UserError, match="expected NAME:STEPS"):
        compare.parse_variant("name=a,sampler=ddim")
    with pytest.raises(UserError, match="is not KEY=VALUE"):
        compare.parse_variant("name=a,flip")


def test_other_settings_do_not_touch_the_original_predictor(trained_tumor_tiny):
    segmenter = load_predictor("tumor", trained_tumor_tiny / "last.safetensors")
    before = dict(segmenter.config["sample"])
    other = segmenter.with_sample(threshold=0.3, flip=True, min_component=9)
    assert (other.config["sample"]["threshold"], other.config["sample"]["min_component"], other.flip_members) == \
        (0.3, 9, True)
    assert segmenter.config["sample"] == before and other.denoiser is segmenter.denoiser
    with pytest.raises(UserError, match="unknown sample setting"):
        segmenter.with_sample(treshold=0.3)


def test_compare_runs_infers_loop_on_the_same_cases(trained_tiny, tmp_path):
    root = tmp_path / "data"
    write_ct_layout(root / "ct-inpainting", patients=3, slices=2, seed=5)
    ckpt = str(trained_tiny / "last.safetensors")
    out = tmp_path / "cmp"
    assert compare.main(["--task", "ct", "--data-root", str(root), "--split", "all", "--out", str(out),
                         "--variant", f"name=base,checkpoint={ckpt}",
                         "--variant", f"name=E3,checkpoint={ckpt},ensemble=3",
                         "--variant", f"name=base again,checkpoint={ckpt}"]) == 0
    with open(out / "results.csv") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["base", "E3", "base again"]
    assert rows["E3"]["ensemble"] == "3" and rows["base"]["cases"] == "6" and rows["base"]["patients"] == "3"
    assert float(rows["base again"]["difference"]) == 0 and float(rows["base"]["difference"]) == 0
    # each row is what infer.py gives for that setting
    for name, extra in (("base", []), ("E3", ["--ensemble", "3"])):
        infer.main(["--task", "ct", "--data-root", str(root), "--checkpoint", ckpt, "--out", str(tmp_path / name),
                    *extra])
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert float(rows[name]["mae"]) == pytest.approx(metrics["mae"], abs=1e-4)
        assert float(rows[name]["mae_se"]) == pytest.approx(metrics["mae_se"], abs=1e-4)
    with open(out / "cases.csv") as f:
        cases = list(csv.DictReader(f))
    diffs = [float(c["E3"]) - float(c["base"]) for c in cases]
    assert float(rows["E3"]["difference"]) == pytest.approx(np.mean(diffs), abs=1e-4)
    assert (out / "compare.png").is_file() and "| E3 | " in (out / "results.md").read_text()


def test_compare_refuses_checkpoints_that_split_the_patients_differently(trained_tiny, tmp_path):
    root = tmp_path / "data"
    write_ct_layout(root / "ct-inpainting", patients=4, slices=1, seed=5)
    state, config, meta = load_slim(trained_tiny / "last.safetensors")
    config["data"]["split_seed"] = 7
    other = tmp_path / "other.safetensors"
    save_slim(other, state, config, meta)
    with pytest.raises(UserError, match="select different cases"):
        compare.main(["--task", "ct", "--data-root", str(root), "--split", "val", "--out", str(tmp_path / "o"),
                      "--variant", f"name=a,checkpoint={trained_tiny / 'last.safetensors'}",
                      "--variant", f"name=b,checkpoint={other}"])
