"""The GPU smoke check's dry run on the CPU: every row runs (training, infer.py, serve.py) and the table is printed."""
import json
import subprocess
import sys

from tests.conftest import REPO


def test_gpu_smoke_dry_run_on_the_cpu(tmp_path):
    out = tmp_path / "smoke"
    done = subprocess.run([sys.executable, "-m", "eval.gpu_smoke", "--device", "cpu", "--configs", "ct_tiny",
                           "--steps", "2", "--compile", "off", "--limit", "1", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((out / "smoke.json").read_text())
    rows = {r["what"]: r for r in report["rows"]}
    assert set(rows) == {"train ct_tiny", "infer.py --task ct --device cpu", "infer.py --task tumor --device cpu",
                         "serve.py --task ct --device cpu", "serve.py --task tumor --device cpu"}
    assert all(r["ok"] for r in rows.values())
    assert rows["train ct_tiny"]["images_per_s"] > 0
    assert "| train ct_tiny | yes |" in done.stdout


def test_gpu_smoke_refuses_cuda_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    done = subprocess.run([sys.executable, "-m", "eval.gpu_smoke", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: --device cuda")
