"""Nested folds joined into one ensemble (`eval.join`, issue #27's "folds 1 vs 5"): the joined inner-fold networks
keep their outer fold's validation patients held out, score there beside one network of that fold, and have no
calibration side; networks of other outer folds or other architectures are refused."""
import json

import pytest

import train_diffusion
from diffusion.checkpoint import load_slim, member_states
from diffusion.errors import UserError
from diffusion.evaluate import select_cases
from diffusion.inference import load_predictor
from diffusion.tasks import get_task
from eval import calibrate, join
from tests.conftest import REPO, write_tumor_layout

TINY = str(REPO / "configs/tumor_tiny.yaml")


@pytest.fixture(scope="module")
def nested(tmp_path_factory):
    base = tmp_path_factory.mktemp("nested")
    write_tumor_layout(base / "data" / "tumor-segmentation", patients=9, controls=2)
    runs = {}
    for name, sets in {"inner0": ["data.inner_folds=2", "data.inner_fold=0"],
                       "inner1": ["data.inner_folds=2", "data.inner_fold=1"],
                       "all": [], "fold1": ["data.fold=1"]}.items():
        args = ["--config", TINY, "--out", str(base / name), "--data-root", str(base / "data"),
                "--set", "data.folds=3", "--set", "sample.sampler=regressor", "--set", "sample.steps=1",
                "--set", "diffusion.objective=regress", "--set", "diffusion.loss=bce_dice"]
        for s in sets:
            args += ["--set", s]
        assert train_diffusion.main(args) == 0
        runs[name] = base / name / "last.safetensors"
    return base, runs


def test_joined_inner_folds_hold_out_their_outer_fold_and_score_beside_one_network(nested):
    base, runs = nested
    out = join.join([str(runs["inner0"]), str(runs["inner1"])], base / "joined.safetensors")
    state, config, meta = load_slim(out)
    assert len(member_states(state)) == 2 and meta["members"] == 2
    assert [m["inner_fold"] for m in meta["member_meta"]] == [0, 1] and {m["fold"] for m in meta["member_meta"]} == {0}
    for k, member in enumerate(member_states(state)):
        own = load_slim(runs[f"inner{k}"])[0]
        assert all((member[key] == own[key]).all() for key in own)
    task = get_task("tumor")
    root = base / "data" / "tumor-segmentation"
    predictor = load_predictor("tumor", out)
    joined_val, line = select_cases(task, root, predictor.config["data"], "val", members=len(predictor.models),
                                    whose=str(out))
    single_val, _ = select_cases(task, root, load_slim(runs["all"])[1]["data"], "val")
    assert [c.id for c in joined_val] == [c.id for c in single_val] and "2 inner-fold networks joined" in line
    trained = set()
    for k in (0, 1):
        config = load_slim(runs[f"inner{k}"])[1]["data"]
        trained |= {c.patient for c in select_cases(task, root, config, "train")[0]}
    assert not trained & {c.patient for c in joined_val}  # no member saw the patients it is scored on
    with pytest.raises(UserError, match="has none"):
        select_cases(task, root, predictor.config["data"], "calib", members=2, whose=str(out))
    # "folds 1 vs 5": one calibration run, the same patients, each candidate cross-fitted
    assert calibrate.main(["--checkpoint", str(runs["all"]), str(out), "--split", "val", "--cross-fit", "2",
                           "--data-root", str(base / "data"), "--out", str(base / "cmp.safetensors")]) == 0
    report = json.loads((base / "cmp.safetensors.threshold.json").read_text())
    assert len(report["cross_fit"]["per_checkpoint"]) == 2 and report["images"] == len(joined_val)


def test_join_refuses_other_outer_folds_other_networks_and_a_single_checkpoint(nested, tmp_path):
    _, runs = nested
    with pytest.raises(UserError, match="other validation patients"):
        join.join([str(runs["inner0"]), str(runs["fold1"])], tmp_path / "x.safetensors")
    from diffusion.checkpoint import save_slim

    state, config, meta = load_slim(runs["inner1"])
    wider = {**config, "model": {**config["model"], "block_out_channels": [8, 32]}}
    save_slim(tmp_path / "wide.safetensors", state, wider, meta)
    with pytest.raises(UserError, match="different network"):
        join.join([str(runs["inner0"]), str(tmp_path / "wide.safetensors")], tmp_path / "y.safetensors")
    with pytest.raises(UserError, match="two or more"):
        join.join([str(runs["inner0"])], tmp_path / "z.safetensors")
