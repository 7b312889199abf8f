"""K-fold training and the fold ensemble (issue #27): every patient scored once, by the one fold model that did
not train on it; settings chosen out of fold; the release holds the fold models as one ensemble."""
import json

import numpy as np
import pytest

import train_diffusion
from diffusion.checkpoint import load_slim, member_states
from diffusion.data.split import split_by_config
from diffusion.inference import load_predictor
from diffusion.tasks import get_task
from eval import crossval
from tests.conftest import REPO, write_tumor_layout

TINY = str(REPO / "configs/tumor_tiny.yaml")


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    base = tmp_path_factory.mktemp("folds")
    write_tumor_layout(base / "data" / "tumor-segmentation", patients=4, controls=2)
    runs = []
    for k in range(2):
        run = base / f"fold{k}"
        assert train_diffusion.main(["--config", TINY, "--out", str(run), "--data-root", str(base / "data"),
                                     "--set", "data.folds=2", "--set", f"data.fold={k}", "--set", "data.synthetic_fraction=0.5",
                                     "--set", "data.zoom=0.2", "--set", "data.rotate=10",
                                     "--set", "sample.sampler=regressor", "--set", "sample.steps=1",
                                     "--set", "diffusion.objective=regress", "--set", "diffusion.loss=bce_dice"]) == 0
        runs.append(run / "last.safetensors")
    out = base / "cv"
    assert crossval.main(["--checkpoint", *map(str, runs), "--data-root", str(base / "data"), "--out", str(out),
                          "--release", str(base / "ensemble.safetensors")]) == 0
    return base, runs, json.loads((out / "crossval.json").read_text())


def test_every_patient_is_scored_once_by_the_fold_that_did_not_train_on_it(folds):
    base, runs, report = folds
    task = get_task("tumor")
    root = base / "data" / "tumor-segmentation"
    patients = [c.id for c in task.layout.list_cases(root)]
    assert sorted(report["per_patient"]) == sorted(patients) and report["patients"] == 4
    for case_id, row in report["per_patient"].items():
        config = load_slim(runs[row["fold"]])[1]["data"]
        trained = {c.patient for c in split_by_config(task.layout.list_cases(root, True), config, "train")}
        assert case_id not in trained


def test_the_cross_validated_setting_is_chosen_on_other_folds(folds):
    _, _, report = folds
    assert len(report["settings_per_fold"]) == 2 and 0 <= report["cross_validated_dice"] <= 1
    assert report["cross_validated_dice"] <= report["chosen"]["dice_in_sample"] + 1e-9  # in-sample is optimistic


def test_the_release_is_the_ensemble_of_the_fold_models(folds, tumor_root):
    base, runs, report = folds
    state, config, meta = load_slim(base / "ensemble.safetensors")
    members = member_states(state)
    assert len(members) == 2 and meta["members"] == 2
    assert [m["fold"] for m in meta["member_meta"]] == [0, 1]  # member k is fold k (a warm start per fold reads it)
    for member, run in zip(members, runs):
        own = load_slim(run)[0]
        assert all(np.array_equal(member[k].numpy(), own[k].numpy()) for k in own)
    assert config["sample"]["threshold"] == report["chosen"]["threshold"]
    predictor = load_predictor("tumor", base / "ensemble.safetensors")
    image = get_task("tumor").layout.read_case(get_task("tumor").layout.resolve_root(tumor_root)[0],
                                        get_task("tumor").layout.list_cases(get_task("tumor").layout.resolve_root(tumor_root)[0])[0],
                                        False).inputs
    prediction = predictor.predict_one(image, seed=0)
    assert prediction.image.dtype == np.uint8 and set(np.unique(prediction.image)) <= {0, 255}


def test_the_fold_ensemble_has_no_held_out_side_so_infer_refuses_split_val(folds, tmp_path):
    """Every patient of the split was trained on by K-1 of the ensemble's members: a "validation" score would be an
    in-sample one. infer.py and eval.score (and eval.compare) say so instead; --split all (new patients) runs."""
    import infer
    from diffusion.errors import UserError
    from eval import score

    base, _, _ = folds
    args = ["--task", "tumor", "--data-root", str(base / "data"), "--checkpoint", str(base / "ensemble.safetensors")]
    for split in ("val", "calib"):
        with pytest.raises(UserError, match="fold ensemble of 2 networks"):
            infer.main([*args, "--split", split, "--out", str(tmp_path / split)])
    assert infer.main([*args, "--split", "all", "--limit", "1", "--out", str(tmp_path / "all")]) == 0
    with pytest.raises(UserError, match="fold ensemble"):  # eval.score reads the split from the checkpoint too
        score.main(["--task", "tumor", "--pred", str(tmp_path / "all"), "--data-root", str(base / "data"),
                    "--checkpoint", str(base / "ensemble.safetensors"), "--split", "val", "--out", str(tmp_path / "s")])


def test_the_fold_ensemble_exports_as_a_diffusers_pipeline_with_every_member(folds, tmp_path):
    """eval.export writes unet/ and unet_member1/; from_pretrained loads both and predicts what infer.py's
    predictor does with the checkpoint (a pipeline that dropped a member would predict with one network)."""
    from diffusion.pipelines import TumorSegmentationPipeline
    from eval import export

    base, _, _ = folds
    checkpoint = base / "ensemble.safetensors"
    assert export.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "unet_member1" / "config.json").is_file()
    pipe = TumorSegmentationPipeline.from_pretrained(tmp_path / "x")
    assert len(pipe.networks) == 2
    image = np.full((64, 48), 230, np.uint8)
    image[20:30, 10:20] = 20
    got = pipe(image=image, seed=0)
    want = load_predictor("tumor", checkpoint).predict_one({"image": image}, seed=0)
    assert np.allclose(got.probability, want.probability, atol=1e-3)


def test_the_fold_models_must_be_one_splits_folds(folds):
    from diffusion.errors import UserError

    base, runs, _ = folds
    with pytest.raises(UserError, match="folds 0..K-1"):
        crossval.main(["--checkpoint", str(runs[0]), "--data-root", str(base / "data"), "--out", str(base / "x")])


def _blind_copy(run, path):
    """The fold model with its output layer's bias pushed far down: it marks no pixel at any threshold."""
    state, config, meta = load_slim(run)
    state["conv_out.bias"] = state["conv_out.bias"] - 1e3
    from diffusion.checkpoint import save_slim

    save_slim(path, state, config, meta)
    return path


def test_several_checkpoints_per_fold_are_candidates_chosen_out_of_fold(folds):
    base, runs, report = folds
    blind = [_blind_copy(run, base / f"blind{k}.safetensors") for k, run in enumerate(runs)]
    out = base / "cv_candidates"
    # candidates in fold order: all blind copies first, then the trained models (fold of each read from its config)
    assert crossval.main(["--checkpoint", *map(str, blind), *map(str, runs), "--data-root", str(base / "data"),
                          "--out", str(out), "--release", str(base / "chosen.safetensors")]) == 0
    got = json.loads((out / "crossval.json").read_text())
    names = list(got["candidates"])
    assert len(names) == 2 and names[1] == " ".join(map(str, runs))
    # the trained models, as the only candidate, score what they scored alone; the blind copies lose to them
    assert got["candidates"][names[1]]["dice"] == pytest.approx(report["cross_validated_dice"])
    assert got["candidates"][names[0]]["vs_first"] == 0
    assert got["candidates"][names[1]]["vs_first"] > 0
    assert got["chosen"]["candidate"] == 1 and got["checkpoints"] == list(map(str, runs))
    state = member_states(load_slim(base / "chosen.safetensors")[0])
    for member, run in zip(state, runs):
        own = load_slim(run)[0]
        assert all(np.array_equal(member[k].numpy(), own[k].numpy()) for k in own)


def test_runs_joined_with_plus_predict_each_fold_together_and_release_as_one_ensemble(folds, tmp_path):
    from diffusion.checkpoint import save_slim
    from diffusion.errors import UserError
    from diffusion.inference import case_seed

    base, runs, _ = folds
    ensemble = base / "ensemble.safetensors"
    blind = [_blind_copy(run, tmp_path / f"blind{k}.safetensors") for k, run in enumerate(runs)]
    joined = crossval.fold_entries(f"{ensemble}+{blind[1]}+{blind[0]}")  # a fold ensemble and single fold files
    alone = crossval.fold_entries(str(ensemble))
    assert [p.config["data"]["fold"] for _, p, _ in joined] == [0, 1]
    assert [len(p.models) for _, p, _ in joined] == [2, 2]
    assert [[n for n, _ in networks] for _, _, networks in joined] == [[f"{ensemble} member 0", str(blind[0])],
                                                                      [f"{ensemble} member 1", str(blind[1])]]
    task = get_task("tumor")
    root, _ = task.layout.resolve_root(base / "data")
    case = task.layout.list_cases(root)[0]
    inputs = task.layout.read_case(root, case, with_truth=False).inputs
    for (_, together, _), (_, own, _) in zip(joined, alone):  # a blind network's members say 0: the mean halves
        want = own.predict_one(inputs, seed=case_seed(case.id)).probability
        assert np.allclose(together.predict_one(inputs, seed=case_seed(case.id)).probability, want / 2, atol=1e-6)
    out = tmp_path / "cv"
    assert crossval.main(["--checkpoint", f"{ensemble}+{blind[0]}+{blind[1]}", "--data-root", str(base / "data"),
                          "--out", str(out), "--release", str(tmp_path / "runs.safetensors")]) == 0
    state, _, meta = load_slim(tmp_path / "runs.safetensors")
    assert len(member_states(state)) == 4 and [m["fold"] for m in meta["member_meta"]] == [0, 0, 1, 1]
    assert [len(p.models) for _, p, _ in crossval.fold_entries(str(tmp_path / "runs.safetensors"))] == [2, 2]
    assert len(load_predictor("tumor", tmp_path / "runs.safetensors").models) == 4  # infer.py uses all of them
    other_state, config, other_meta = load_slim(blind[0])
    save_slim(tmp_path / "other.safetensors", other_state, {**config, "model": {**config["model"], "dropout": 0.1}},
              other_meta)
    with pytest.raises(UserError, match="not the network and split"):
        crossval.fold_entries(f"{runs[0]}+{tmp_path / 'other.safetensors'}")


def test_a_fold_given_more_often_than_another_is_a_clear_error(folds):
    from diffusion.errors import UserError

    base, runs, _ = folds
    with pytest.raises(UserError, match="each fold as often"):
        crossval.main(["--checkpoint", *map(str, runs), str(runs[0]), "--data-root", str(base / "data"),
                       "--out", str(base / "y")])


def test_against_scores_another_splits_model_on_its_own_validation_patients_beside_their_out_of_fold_dice(
        folds, tmp_path):
    import infer

    base, runs, _ = folds
    other = tmp_path / "other"  # a model of the ordinary split (no folds), as today's release is
    assert train_diffusion.main(["--config", TINY, "--out", str(other), "--data-root", str(base / "data"),
                                 "--set", "data.val_patients=2", "--set", "sample.sampler=regressor",
                                 "--set", "sample.steps=1", "--set", "diffusion.objective=regress",
                                 "--set", "diffusion.loss=bce_dice"]) == 0
    checkpoint = str(other / "last.safetensors")
    assert crossval.main(["--checkpoint", *map(str, runs), "--data-root", str(base / "data"), "--out",
                          str(tmp_path / "cv"), "--against", checkpoint]) == 0
    report = json.loads((tmp_path / "cv" / "crossval.json").read_text())
    assert infer.main(["--task", "tumor", "--data-root", str(base / "data"), "--checkpoint", checkpoint,
                       "--split", "val", "--out", str(tmp_path / "infer")]) == 0
    scored = json.loads((tmp_path / "infer" / "metrics.json").read_text())
    got = report["against"]
    assert got["patients"] == scored["n"] == 2 and (tmp_path / "cv" / "crossval.png").is_file()
    assert got["dice"]["mean"] == pytest.approx(scored["dice"])  # the other model as infer.py scores it
    ids = [case["id"] for case in scored["cases"]]
    ours = np.mean([report["per_patient"][i]["dice"] for i in ids])  # the same patients, out of fold
    assert got["out_of_fold_dice"]["mean"] == pytest.approx(ours)
    assert got["out_of_fold_minus_it"]["mean"] == pytest.approx(ours - scored["dice"])


def test_a_fold_ensemble_stands_for_its_fold_models_and_takes_other_sample_settings(folds):
    base, runs, report = folds
    ensemble = base / "ensemble.safetensors"
    out = base / "cv_release"
    # the release re-scored out of fold: member k predicts fold k's held-out patients, as the fold files did
    assert crossval.main(["--checkpoint", str(ensemble), "--data-root", str(base / "data"), "--out", str(out),
                          "--release", str(base / "again.safetensors")]) == 0
    again = json.loads((out / "crossval.json").read_text())
    assert {i: r["fold"] for i, r in again["per_patient"].items()} == {i: r["fold"] for i, r in report["per_patient"].items()}
    assert again["cross_validated_dice"] == pytest.approx(report["cross_validated_dice"])
    meta = load_slim(base / "again.safetensors")[2]["member_meta"]
    assert [m["trained_as"] for m in meta] == list(map(str, runs))  # the origin of each member survives
    for member, run in zip(member_states(load_slim(base / "again.safetensors")[0]), runs):
        own = load_slim(run)[0]
        assert all(np.array_equal(member[k].numpy(), own[k].numpy()) for k in own)
    # PATH@KEY=VALUE: each fold model with the setting, the written release keeps it
    entries = crossval.fold_entries(f"{ensemble}@flip=false,jumps=3")
    assert [p.config["data"]["fold"] for _, p, _ in entries] == [0, 1]
    assert all(p.config["sample"]["jumps"] == 3 and p.flip_members is False for _, p, _ in entries)
    assert crossval.main(["--checkpoint", f"{ensemble}@jumps=3", "--data-root", str(base / "data"), "--out",
                          str(base / "cv_jumps"), "--release", str(base / "jumps.safetensors")]) == 0
    assert load_slim(base / "jumps.safetensors")[1]["sample"]["jumps"] == 3


def test_candidates_that_differ_only_in_post_processing_share_one_prediction(folds, monkeypatch):
    """`@uptake_fraction` (a decision setting) reuses the networks' prediction; `@ensemble=3` (a sampler setting)
    does not: 4 patients x 2 predictions, not x 3. Each candidate's table is made with its own cut and the
    patients' images, and the written release keeps the chosen candidate's cut."""
    from diffusion.inference import Predictor

    base, _, _ = folds
    ensemble = str(base / "ensemble.safetensors")
    calls, fractions = [], []
    predict_one, dice_table = Predictor.predict_one, crossval.dice_table
    monkeypatch.setattr(Predictor, "predict_one", lambda self, *a, **k: calls.append(1) or predict_one(self, *a, **k))
    monkeypatch.setattr(crossval, "dice_table", lambda probs, truths, images=None, uptake_fraction=0.0: (
        fractions.append((uptake_fraction, len(images))) or dice_table(probs, truths, images=images,
                                                                       uptake_fraction=uptake_fraction)))
    assert crossval.main(["--checkpoint", ensemble, f"{ensemble}@uptake_fraction=0.3", f"{ensemble}@ensemble=3",
                          "--data-root", str(base / "data"), "--out", str(base / "cv_cut")]) == 0
    assert len(calls) == 4 * 2
    assert fractions == [(0.0, 4), (0.3, 4), (0.0, 4)]
    report = json.loads((base / "cv_cut" / "crossval.json").read_text())
    assert len(report["candidates"]) == 3 and "uptake_fraction" in report["chosen"]
    assert crossval.main(["--checkpoint", f"{ensemble}@uptake_fraction=0.3", "--data-root", str(base / "data"),
                          "--out", str(base / "cv_cut1"), "--release", str(base / "cut.safetensors")]) == 0
    assert load_slim(base / "cut.safetensors")[1]["sample"]["uptake_fraction"] == 0.3
    assert json.loads((base / "cv_cut1" / "crossval.json").read_text())["chosen"]["uptake_fraction"] == 0.3


@pytest.mark.parametrize("entry, message", [("x.safetensors@steps", "PATH@KEY=VALUE"),
                                            ("{ens}@colour=red", "unknown sample setting")])
def test_a_malformed_checkpoint_entry_is_one_clear_error(folds, entry, message):
    from diffusion.errors import UserError

    base, _, _ = folds
    with pytest.raises(UserError, match=message):
        crossval.fold_entries(entry.format(ens=base / "ensemble.safetensors"))


def test_an_ensemble_whose_member_records_do_not_match_its_networks_is_refused(folds, tmp_path):
    from diffusion.checkpoint import save_slim
    from diffusion.errors import UserError

    base, _, _ = folds
    state, config, meta = load_slim(base / "ensemble.safetensors")
    save_slim(tmp_path / "odd.safetensors", state, config, {**meta, "member_meta": meta["member_meta"][:1]})
    with pytest.raises(UserError, match="2 networks but 1 member records"):
        crossval.fold_entries(str(tmp_path / "odd.safetensors"))


def test_a_candidate_is_named_by_the_part_of_its_fold_paths_that_varies():
    """The figure's legend: two candidates whose fold models sit in the same run folders must get different names
    (the old name, fold 0's folder, called runs/tumor_soup0/seg/last and runs/tumor_soup0/avg both 'tumor_soup0' or
    'seg'), the fold number shown as {k}; a fold ensemble keeps its file name and sample settings."""
    folds = lambda pattern: [(pattern.format(k), None, None) for k in range(5)]
    assert crossval.candidate_name(folds("runs/tumor_soup{}/seg/last.safetensors")) == "tumor_soup{k}/seg/last"
    assert crossval.candidate_name(folds("runs/tumor_soup{}/avg.safetensors")) == "tumor_soup{k}/avg"
    assert crossval.candidate_name(folds("runs/gpu_soup/seg_fold{}.safetensors@steps=1")) == "gpu_soup/seg_fold{k}@steps=1"
    assert crossval.candidate_name(folds("checkpoints/tumor_seg.safetensors@flip=true member {}")) == "tumor_seg@flip=true"
    joined = "checkpoints/tumor_seg.safetensors+" + "+".join(f"runs/fold{k}/last.safetensors" for k in range(5))
    assert crossval.candidate_name(folds(joined + "@flip=false member {}")) == "tumor_seg + fold{k}/last@flip=false"
    # fold files whose names differ by more than the fold number are not given a {k} pattern that none of them has
    mixed = [("checkpoints/wip/tumor_lever_all_last.safetensors", None, None)] + [
        (f"checkpoints/wip/tumor_fold{k}_last.safetensors", None, None) for k in range(1, 5)]
    assert crossval.candidate_name(mixed) == "wip/tumor_lever_all_last … wip/tumor_fold4_last"
