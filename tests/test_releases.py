"""The released checkpoints (`checkpoints/*.safetensors`, not `checkpoints/wip/`): each is what a user gets by
default, so each must load for its task, carry a default sample setting its model can run, come with a model card,
stay under the size limit, and predict in the competition's format on generated data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffusion.checkpoint import is_shard, load_slim
from diffusion.inference import load_predictor
from diffusion.tasks import get_task

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
FILES = sorted(CHECKPOINTS.glob("*.safetensors"))
RELEASES = [path for path in FILES if not is_shard(path)]  # a larger release's later shards load with it


def test_each_task_has_its_release():
    for name in ("ct", "tumor"):
        assert (CHECKPOINTS / get_task(name).released) in RELEASES


@pytest.mark.parametrize("path", RELEASES, ids=lambda p: p.name)
def test_release_has_a_card_and_predicts_with_its_default_setting(path, ct_root, tumor_root):
    _, config, _ = load_slim(path)
    task = get_task(config["task"])
    assert path.with_suffix(".md").is_file(), f"{path.name} has no model card"
    predictor = load_predictor(task.name, path)
    spec, _ = predictor.default_spec()
    predictor.check_spec(spec)  # e.g. a regressor released with a diffusion sampler fails here
    root, _ = task.layout.resolve_root(ct_root if task.name == "ct" else tumor_root)
    case = task.layout.list_cases(root)[0]
    example = task.layout.read_case(root, case, with_truth=True)
    image = task.output_image(predictor.predict_one(example.inputs, seed=0))
    assert image.shape == example.truth.shape and image.dtype == np.uint8
    if task.name == "tumor":
        assert set(np.unique(image)) <= {0, 255}
    assert np.isfinite(task.score(image, example.truth)[task.metric])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_released_file_stays_under_the_size_limit(path):
    assert path.stat().st_size <= 25e6


def test_eval_release_changes_only_sample_settings_and_refuses_one_the_model_cannot_run(trained_tumor_tiny, tmp_path):
    from diffusion.errors import UserError
    from eval import release

    source = trained_tumor_tiny / "last.safetensors"
    out = tmp_path / "release.safetensors"
    assert release.main(["--checkpoint", str(source), "--out", str(out), "--set", "sample.ensemble=2"]) == 0
    state, config, meta = load_slim(out)
    source_state, source_config, _ = load_slim(source)
    assert config["sample"]["ensemble"] == 2 and meta["released_from"] == str(source)
    assert config["model"] == source_config["model"] and all((state[k] == source_state[k]).all() for k in state)
    with pytest.raises(UserError, match="sample"):
        release.main(["--checkpoint", str(source), "--out", str(tmp_path / "x.safetensors"), "--set", "train.lr=1"])
    bad = tmp_path / "bad.safetensors"
    with pytest.raises(UserError, match="regressor"):  # a diffusion model released with the regressor's sampler
        release.main(["--checkpoint", str(source), "--out", str(bad), "--set", "sample.sampler=regressor"])
    assert not bad.exists()


def test_infer_sampler_distilled_runs_the_released_student_at_its_own_setting(ct_root, tmp_path):
    import json

    import infer

    student = CHECKPOINTS / "ct_inpaint_distilled.safetensors"
    if not student.is_file():
        pytest.skip("no released CT student")
    out = tmp_path / "out"
    assert infer.main(["--task", "ct", "--data-root", str(ct_root), "--sampler", "distilled", "--limit", "1",
                       "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    _, config, _ = load_slim(student)
    assert metrics["sampler"].startswith("distilled") and metrics["ensemble"] == config["sample"]["ensemble"]


@pytest.mark.parametrize("path", RELEASES, ids=lambda p: p.name)
def test_release_card_states_the_license_intended_use_and_limits(path):
    card = path.with_suffix(".md").read_text()
    assert "| license | MIT" in card and "## Intended use" in card and "## Limits" in card
    assert (CHECKPOINTS.parent / "LICENSE").read_text().startswith("MIT License")
