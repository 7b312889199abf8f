"""Configs are checked when they are built: a bad value is one line naming the key, before any data is read."""
import subprocess
import sys

import pytest

import train_diffusion
from diffusion.config import DEFAULTS, Config, apply_overrides, check_config, fill_defaults, load_config
from diffusion.errors import UserError, run_cli
from tests.conftest import REPO

TINY = str(REPO / "configs/ct_tiny.yaml")

BAD = {  # the values of issue #29, and what the message must name as allowed
    "train.lr=abc": "train.lr='abc': should be a valid number",
    "train.batch_size=0": "train.batch_size=0: should be greater than or equal to 1",
    "diffusion.prediction_type=eps": "diffusion.prediction_type='eps': should be 'epsilon', 'v_prediction' or 'sample'",
    "train.lr_schedule=foo": "train.lr_schedule='foo': should be 'linear', 'cosine'",
    "train.mixed_precision=fp8": "train.mixed_precision='fp8': should be 'no', 'fp16' or 'bf16'",
    "model.block_out_channels=[8,15]": "model.block_out_channels=[8, 15]: every entry must be a positive multiple",
    "train.ema_decay=2": "train.ema_decay=2: should be less than 1",
    "sample.sampler=ddmp": "sample.sampler='ddmp' (steps 2): sampler spec 'ddmp:2': unknown sampler 'ddmp'; known:",
    "train.log_with=wandbx": "train.log_with='wandbx': should be 'none', 'tensorboard' or 'all'",
}


@pytest.mark.parametrize("setting", sorted(BAD))
def test_a_bad_value_is_one_line_naming_key_value_and_what_is_allowed(setting, tmp_path, capsys):
    """Exit status 2 and one line, before any data is read (the data root does not even exist)."""
    args = ["--config", TINY, "--out", str(tmp_path / "run"), "--data-root", str(tmp_path / "missing"),
            "--set", setting]
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: train_diffusion.main(args))
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: --set: ") and BAD[setting] in err, err
    assert not (tmp_path / "run").exists()  # nothing started


def test_no_traceback_from_the_command_line(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "train_diffusion.py"), "--config", TINY, "--out",
                          str(tmp_path / "run"), "--set", "train.batch_size=0"], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == ["error: --set: train.batch_size=0: should be greater than or equal to 1"]


def test_unknown_keys_still_fail():
    with pytest.raises(UserError, match="unknown key 'train.lrr'"):
        apply_overrides(load_config(TINY), ["train.lrr=1"])


def test_a_bad_value_in_the_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: ct\ntrain:\n  grad_accum: 0\n")
    with pytest.raises(UserError, match=r"^config .*bad.yaml: train.grad_accum=0: should be greater than"):
        load_config(path)


def test_values_are_coerced_to_their_types():
    """`--set train.lr=1e-3` is a float (YAML 1.1 reads it as a string), `mixed_precision: no` is accelerate's 'no'."""
    config = apply_overrides(load_config(TINY), ["train.lr=1e-3", "train.mixed_precision=no"])
    assert config["train"]["lr"] == 0.001 and config["train"]["mixed_precision"] == "no"


def test_the_sampler_must_fit_the_objective():
    with pytest.raises(UserError, match="'regressor' needs diffusion.objective 'regress'"):
        apply_overrides(load_config(TINY), ["sample.sampler=regressor", "sample.steps=1"])
    with pytest.raises(UserError, match="samples only with 'regressor'"):
        apply_overrides(load_config(TINY), ["diffusion.objective=regress"])


def test_defaults_come_from_the_schema_and_pass_it():
    assert DEFAULTS == Config().model_dump() == check_config(DEFAULTS)


def test_every_shipped_config_passes(tmp_path):
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)


def test_a_stored_config_gets_the_defaults_of_keys_added_since():
    old = {"task": "ct", "train": {"lr": 1e-4}, "sample": {"sampler": "ddim", "steps": 1}}
    filled = fill_defaults(old)
    assert filled["train"]["lr"] == 1e-4 and filled["sample"]["jumps"] == DEFAULTS["sample"]["jumps"]
    assert filled["model"] == DEFAULTS["model"]
