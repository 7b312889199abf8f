"""What a user of accelerate expects of train_diffusion.py: the launcher's mixed precision respected (with one line
saying which won), trackers through `train.log_with`, and the command line and commit saved beside config.yaml."""
import json

import pytest
import yaml
from accelerate.state import AcceleratorState

import train_diffusion
from tests.conftest import REPO, write_ct_layout

TINY = str(REPO / "configs/ct_tiny.yaml")


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One step of the tiny config (bf16 in its YAML) as `accelerate launch --mixed_precision no` starts it (the
    launcher passes its setting on in ACCELERATE_MIXED_PRECISION), with `train.log_with=tensorboard`."""
    import os
    from contextlib import redirect_stdout
    from io import StringIO

    base = tmp_path_factory.mktemp("launched")
    write_ct_layout(base / "data" / "ct-inpainting")
    before = os.environ.get("ACCELERATE_MIXED_PRECISION")
    os.environ["ACCELERATE_MIXED_PRECISION"] = "no"
    AcceleratorState._reset_state(reset_partial_state=True)
    printed = StringIO()
    try:
        with redirect_stdout(printed):
            assert train_diffusion.main(["--config", TINY, "--out", str(base / "run"), "--data-root",
                                         str(base / "data"), "--max-steps", "1", "--set", "train.log_with=tensorboard",
                                         "--set", "train.val_every=100"]) == 0
    finally:
        os.environ.pop("ACCELERATE_MIXED_PRECISION") if before is None else os.environ.update(
            ACCELERATE_MIXED_PRECISION=before)
        AcceleratorState._reset_state(reset_partial_state=True)
    return base / "run", printed.getvalue()


def test_the_launchers_mixed_precision_wins_and_one_line_says_so(launched):
    run, printed = launched
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["mixed_precision"] == "no"
    lines = [line for line in printed.splitlines() if line.startswith("mixed precision:")]
    assert lines == ["mixed precision: no (accelerate launch --mixed_precision / accelerate config; the config's "
                     "train.mixed_precision bf16 is not used)"]


def test_without_the_launcher_the_config_decides(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert train_diffusion.resolve_mixed_precision("bf16")[0] == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert train_diffusion.resolve_mixed_precision("bf16") == (
        "bf16", "mixed precision: bf16 (train.mixed_precision, as accelerate launch says)")


def test_log_with_tensorboard_writes_an_events_file(launched):
    run, _ = launched
    events = list((run / "logs").rglob("events.out.tfevents.*"))
    assert events, sorted(str(p) for p in run.rglob("*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = set()
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
    assert {"loss", "lr"} <= scalars, scalars
    assert (run / "metrics.jsonl").is_file()  # kept beside the tracker


def test_the_command_line_and_git_commit_are_saved_beside_the_config(launched):
    run, _ = launched
    (record,) = [json.loads(line) for line in (run / "provenance.jsonl").read_text().splitlines()]
    assert "train.log_with=tensorboard" in record["command"] and record["processes"] == 1
    assert record["git_commit"] is None or len(record["git_commit"]) == 40
    assert record["mixed_precision"].startswith("mixed precision: no")
