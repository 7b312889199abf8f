"""A non-editable install (what `pip install .` or a wheel gives) carries the released weights as package data."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from tests.conftest import REPO, write_ct_layout


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout: the files of a source tree are unknown")
    return [f for f in out.stdout.splitlines() if (REPO / f).is_file()]


def test_a_non_editable_install_runs_infer_with_the_released_checkpoint(tmp_path):
    source, site = tmp_path / "source", tmp_path / "site"
    for name in tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(source)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    assert (site / "checkpoints" / "ct_inpaint.safetensors").is_file()
    write_ct_layout(tmp_path / "data" / "ct-inpainting", patients=1, slices=1)
    # -S: no site module, so no .pth file of this checkout's editable install can put its tree on the path; the
    # dependencies come from this interpreter's site-packages, after the installed copy.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]])}
    where = subprocess.run([sys.executable, "-S", "-c", "import infer, diffusion; print(infer.__file__, diffusion.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert where.returncode == 0 and all(p.startswith(str(site)) for p in where.stdout.split()), where.stdout + where.stderr
    run = subprocess.run([sys.executable, "-S", "-m", "infer", "--task", "ct", "--data-root", str(tmp_path / "data"),
                          "--limit", "1", "--out", str(tmp_path / "out")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n"] == 1 and metrics["checkpoint"].startswith(str(site))  # the installed copy, not this tree


def test_an_install_without_the_weights_says_to_pass_a_checkpoint(monkeypatch, tmp_path):
    from diffusion import inference
    from diffusion.errors import CheckpointError

    monkeypatch.setattr(inference, "RELEASES", tmp_path)
    with pytest.raises(CheckpointError, match=r"not in .*: pass --checkpoint PATH"):
        inference.released_for_sampler("ct", None)
