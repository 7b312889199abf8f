"""Per-pixel intervals from an ensemble (issue #28.3): the bounds and the coverage are computed right on a case
whose quantiles are known, infer.py --interval writes them, and the conformal margin fitted on calibration cases
(eval.calibrate_interval) makes them cover what their level says."""
import json

import numpy as np
import pytest

import infer
from diffusion.data.images import read_png
from diffusion.errors import UserError
from diffusion.metrics import conformal_margin, conformity_scores, interval_bounds, interval_scale, interval_stats
from tests.conftest import write_ct_layout


def test_bounds_are_the_central_quantiles_of_the_members():
    members = np.broadcast_to(np.arange(101, dtype=np.float64)[:, None, None], (101, 2, 3))  # 0..100 at each pixel
    lower, upper = interval_bounds(members, 0.8)
    assert np.allclose(lower, 10) and np.allclose(upper, 90)
    lower, upper = interval_bounds(members, 0.5)
    assert np.allclose(lower, 25) and np.allclose(upper, 75)


def test_coverage_counts_the_truths_inside_the_interval_on_the_chosen_pixels():
    members = np.broadcast_to(np.arange(101, dtype=np.float64)[:, None, None], (101, 1, 6))
    lower, upper = interval_bounds(members, 0.8)
    truth = np.array([[5, 10, 50, 90, 95, 50]], np.uint8)
    where = np.array([[True, True, True, True, True, False]])  # the last pixel is not a predicted one
    stats = interval_stats(lower, upper, truth, where)
    assert stats == {"pixels": 5, "covered": 3, "width": pytest.approx(5 * 80.0)}  # 10 and 90 are inside


def test_on_the_answers_grid_members_that_agree_cover_a_truth_they_round_to():
    """CT answers are whole grey levels: members 117.2-117.4 (all submit 117) cover a truth of 117 on the grid of 1,
    and do not as raw floats; a truth of 118 is covered on neither."""
    members = np.array([117.2, 117.3, 117.3, 117.4]).reshape(4, 1, 1)
    where = np.ones((1, 1), bool)
    for truth, on_grid, raw in ((117, 1, 0), (118, 0, 0)):
        t = np.full((1, 1), truth, np.uint8)
        assert interval_stats(*interval_bounds(members, 0.8, 1.0), t, where)["covered"] == on_grid
        assert interval_stats(*interval_bounds(members, 0.8), t, where)["covered"] == raw
    lower, upper = interval_bounds(members, 0.8, 1.0)
    assert lower.item() == upper.item() == 117.0


def test_a_level_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="interval level"):
        interval_bounds(np.zeros((4, 2, 2)), 1.0)


def test_infer_interval_writes_bounds_and_reports_coverage(trained_tiny, tmp_path):
    write_ct_layout(tmp_path / "data" / "ct-inpainting", patients=1, slices=2)
    out = tmp_path / "out"
    assert infer.main(["--task", "ct", "--data-root", str(tmp_path / "data"), "--checkpoint",
                       str(trained_tiny / "last.safetensors"), "--out", str(out), "--sampler", "ddpm", "--steps", "3",
                       "--ensemble", "4", "--interval", "0.8"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    interval = metrics["interval"]
    assert interval["level"] == 0.8 and 0 <= interval["coverage"] <= 1 and interval["mean_width"] >= 0
    by_level = {float(k): v for k, v in interval["coverage_by_level"].items()}
    assert by_level[0.8] == interval["coverage"] and by_level[0.2] <= by_level[0.5] <= by_level[0.95]  # nested
    lowers = sorted((out / "interval_lower").glob("*.png"))
    uppers = sorted((out / "interval_upper").glob("*.png"))
    assert len(lowers) == len(uppers) == 2
    for lo, hi in zip(lowers, uppers):
        assert np.all(read_png(lo) <= read_png(hi))
    assert (out / "interval.png").is_file()


def test_the_tumor_task_has_no_intervals(trained_tumor_tiny, tumor_root, tmp_path):
    with pytest.raises(UserError, match="no per-pixel intervals"):
        infer.main(["--task", "tumor", "--data-root", str(tumor_root), "--checkpoint",
                    str(trained_tumor_tiny / "last.safetensors"), "--out", str(tmp_path / "o"), "--interval", "0.8"])


def test_the_ablation_reports_each_settings_coverage_and_width(trained_tiny, tmp_path):
    import csv

    from eval import ablate

    write_ct_layout(tmp_path / "data" / "ct-inpainting", patients=1, slices=2)
    assert ablate.main(["--task", "ct", "--data-root", str(tmp_path / "data"), "--checkpoint",
                        str(trained_tiny / "last.safetensors"), "--samplers", "ddim:1,ddpm:3", "--ensemble", "1,4",
                        "--interval", "0.8", "--out", str(tmp_path / "abl")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "abl" / "results.csv")))
    assert list(rows[0])[-2:] == ["coverage", "mean_width"] and len(rows) == 4
    one_member = [r for r in rows if r["ensemble"] == "1"]
    assert all(float(r["mean_width"]) == 0 for r in one_member)  # one member: a zero-width interval
    assert (tmp_path / "abl" / "coverage.png").is_file()


def test_the_conformity_score_is_how_far_the_truth_lies_outside_the_interval():
    lower, upper = np.full((1, 5), 10.0), np.full((1, 5), 90.0)
    truth = np.array([[5, 10, 50, 95, 200]], np.uint8)
    where = np.array([[True, True, True, True, False]])
    assert conformity_scores(lower, upper, truth, where).tolist() == [5, 0, -40, 5]


def test_the_conformal_margin_is_the_ceil_n_plus_one_level_th_smallest_score():
    scores = np.random.default_rng(0).permutation(np.arange(1, 100, dtype=np.float64))  # 1..99, n = 99
    assert conformal_margin(scores, 0.8) == 80  # rank ceil(100 * 0.8) = 80
    assert conformal_margin(scores, 0.5) == 50
    assert conformal_margin(-scores, 0.8) == 0  # an interval that already covers is never narrowed
    with pytest.raises(ValueError, match="too few"):
        conformal_margin(np.arange(3.0), 0.8)  # rank 4 of 3


@pytest.mark.parametrize("level", [0.5, 0.8, 0.95])
def test_a_margin_fitted_on_calibration_pixels_gives_new_pixels_the_coverage_of_its_level(level):
    """Overconfident members (spread 1, truth spread 4 around the same centre): the raw interval covers far less than
    its level; widened by the margin fitted on other, exchangeable pixels it covers the level."""
    rng = np.random.default_rng(1)
    centre = rng.uniform(50, 200, (2, 100, 100))
    members = centre[:, None] + rng.normal(0, 1, (2, 8, 100, 100))
    truth = centre + rng.normal(0, 4, (2, 100, 100))
    where = np.ones((100, 100), bool)
    (lo_c, hi_c), (lo_t, hi_t) = (interval_bounds(members[i], level) for i in range(2))
    margin = conformal_margin(conformity_scores(lo_c, hi_c, truth[0], where), level)
    raw = interval_stats(lo_t, hi_t, truth[1], where)
    widened = interval_stats(lo_t - margin, hi_t + margin, truth[1], where)
    assert raw["covered"] / raw["pixels"] < level - 0.15
    assert abs(widened["covered"] / widened["pixels"] - level) < 0.02


def test_a_scaled_margin_is_narrower_at_the_same_coverage_when_the_spread_follows_the_error():
    """Members whose spread is in proportion to the truth's (but 4x too small): the scaled score covers the level
    on new pixels with a narrower mean interval than one margin for every pixel; the shift score cannot adapt."""
    rng = np.random.default_rng(2)
    centre = rng.uniform(50, 200, (2, 100, 100))
    sigma = rng.choice([0.5, 8.0], (2, 100, 100))  # easy and hard pixels
    members = centre[:, None] + sigma[:, None] * rng.normal(0, 0.25, (2, 8, 100, 100))
    truth = centre + sigma * rng.normal(0, 1, (2, 100, 100))
    where = np.ones((100, 100), bool)
    (lo_c, hi_c), (lo_t, hi_t) = (interval_bounds(members[i], 0.8, 1.0) for i in range(2))
    result = {}
    for score in ("shift", "scaled"):
        margin = conformal_margin(conformity_scores(lo_c, hi_c, truth[0], where,
                                                    interval_scale(lo_c, hi_c, 1.0, score)), 0.8)
        widen = margin * interval_scale(lo_t, hi_t, 1.0, score)
        stats = interval_stats(lo_t - widen, hi_t + widen, truth[1], where)
        result[score] = stats["covered"] / stats["pixels"], stats["width"] / stats["pixels"]
    assert all(abs(coverage - 0.8) < 0.02 for coverage, _ in result.values())
    assert result["scaled"][1] < 0.8 * result["shift"][1]


@pytest.mark.parametrize("score", ["shift", "scaled"])
def test_calibrated_intervals_cover_their_level_and_only_for_the_setting_they_were_fitted_for(trained_tiny, tmp_path,
                                                                                              score):
    from eval import calibrate_interval

    write_ct_layout(tmp_path / "data" / "ct-inpainting", patients=1, slices=2)
    data, calibrated = str(tmp_path / "data"), tmp_path / "calibrated.safetensors"
    assert calibrate_interval.main(["--checkpoint", str(trained_tiny / "last.safetensors"), "--data-root", data,
                                    "--split", "all", "--sampler", "ddpm", "--steps", "3", "--ensemble", "4",
                                    "--score", score, "--out", str(calibrated)]) == 0
    report = json.loads(calibrated.with_name(calibrated.name + ".interval.json").read_text())
    assert report["levels"]["0.8"]["coverage_calibrated"] >= 0.8 and report["slices"] == 2

    def run(out, *extra):
        assert infer.main(["--task", "ct", "--data-root", data, "--checkpoint", str(calibrated), "--out",
                           str(tmp_path / out), "--interval", "0.8", *extra]) == 0
        return json.loads((tmp_path / out / "metrics.json").read_text())

    same = run("same")  # the calibrated checkpoint samples as it was calibrated by default: ddpm:3, E=4
    assert same["sampler"] == "ddpm:3" and same["ensemble"] == 4
    assert same["interval"]["calibrated"] and same["interval"]["margin"] == report["levels"]["0.8"]["margin"]
    assert same["interval"]["score"] == score
    assert same["interval"]["mean_width"] == pytest.approx(report["levels"]["0.8"]["mean_width_calibrated"])
    assert same["interval"]["coverage"] == pytest.approx(report["levels"]["0.8"]["coverage_calibrated"])
    assert same["interval"]["coverage"] >= 0.8  # the same slices it was fitted on: at least the level
    other = run("other", "--ensemble", "2")  # another ensemble: the margins do not apply
    assert not other["interval"]["calibrated"] and other["interval"]["margin"] is None


def test_calibrating_on_calibration_patients_a_model_never_held_out_is_one_clear_line(trained_tiny, tmp_path):
    from eval import calibrate_interval

    write_ct_layout(tmp_path / "data" / "ct-inpainting", patients=2, slices=1)
    with pytest.raises(UserError, match="trained without calibration patients"):
        calibrate_interval.main(["--checkpoint", str(trained_tiny / "last.safetensors"), "--data-root",
                                 str(tmp_path / "data"), "--split", "calib", "--out", str(tmp_path / "c.safetensors")])
