"""The README is true of the code: its release table states each checkpoint's default setting, and its commands run
as written (on the real data, one case or one step each; skipped where ../shared/data is absent)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion.checkpoint import is_shard, read_slim_config
from diffusion.config import spec_of
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
DATA = REPO.parent / "shared" / "data"


def release_rows() -> dict[str, list[str]]:
    """checkpoint file name -> the cells of its row in the README's release table."""
    rows = {}
    for line in README.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 3 and re.fullmatch(r"`[a-z_]+\.safetensors`", cells[0]):
            rows[cells[0].strip("`")] = cells
    return rows


def default_setting(config: dict) -> str:
    s = config["sample"]
    return f"{spec_of(s)} E={s['ensemble']}" + (" flip" if s["flip"] and s["ensemble"] > 1 else "")


def test_the_readme_is_short():
    assert len(README.splitlines()) <= 250


def test_every_release_is_in_the_table_with_its_default_setting_and_network_evaluations():
    rows = release_rows()
    releases = sorted(p.name for p in (REPO / "checkpoints").glob("*.safetensors") if not is_shard(p))
    assert sorted(rows) == releases
    for name in releases:
        config, meta = read_slim_config(REPO / "checkpoints" / name)
        cells = rows[name]
        assert cells[2] == f"`{default_setting(config)}`", (name, cells[2])
        networks = meta.get("members", 1)  # a fold ensemble runs the setting on each of its networks
        assert int(cells[3]) == spec_of(config["sample"]).nfe * config["sample"]["ensemble"] * networks, name


def test_the_tumor_thresholds_in_the_table_are_the_checkpoints():
    for name, cells in release_rows().items():
        config, _ = read_slim_config(REPO / "checkpoints" / name)
        if config["task"] == "tumor":
            assert f"threshold {config['sample']['threshold']:g}" in cells[1], name
            fraction = config["sample"]["uptake_fraction"]  # the uptake cut: stated when on, absent when off
            assert (f"cut to {100 * fraction:g} % of its peak uptake" in cells[1]) == (fraction > 0), name
            assert ("peak uptake" in cells[1]) == (fraction > 0), name


def readme_commands() -> list[str]:
    """The shell commands of the README's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


SKIP = {  # what this test does not run, and where it is covered instead
    "pip": ".ci/run installs as the README says",
    "-m venv": ".ci/run",
    "-m pytest": "this is the test command",
    "serve.py": "tests/test_serve.py starts the server",
    "eval.loadtest": "needs a running server; tests/test_serve.py",
}
NEEDS_GPU = "configs/ct_gpu.yaml"


def adapted(command: str, tmp: Path) -> list[str] | str:
    """The command with its outputs under `tmp` and one case (`--limit 1`) or one step (`--max-steps 1`); a string
    says why it is not run here."""
    for key, why in SKIP.items():
        if key in command:
            return why
    if NEEDS_GPU in command:
        return "a GPU config: eval.gpu_smoke runs it on a GPU"
    words = shlex.split(command)
    for i, word in enumerate(words):
        if word in ("--out", "--pred") and i + 1 < len(words):
            words[i + 1] = str(tmp / words[i + 1])
    if "train_diffusion.py" in command:
        words += ["--max-steps", "1"]
    elif any(tool in command for tool in ("infer.py", "eval.score", "eval.compare", "eval.ablate", "eval.calibrate")):
        if "--limit" in words:
            words[words.index("--limit") + 1] = "1"
        else:
            words += ["--limit", "1"]
    if words[0] == "python":
        words[0] = sys.executable
    elif words[0] == "accelerate":
        words = [str(Path(sys.executable).parent / "accelerate"), *words[1:]]
    return words


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent: the README's commands read the real data")
@pytest.mark.parametrize("command", readme_commands())
def test_the_readme_command_runs_as_written(command, outputs):
    """In README order (a later command reads what an earlier one wrote: score after infer, resume after train)."""
    argv = adapted(command, outputs)
    if isinstance(argv, str):
        pytest.skip(argv)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    env.pop("DMIAI_DATA", None)  # the README's default data root (../shared/data from the repository)
    run = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{shlex.join(argv)}\n{run.stderr[-3000:]}"
