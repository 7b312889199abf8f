"""The GPU smoke check's dry run on the CPU: every row runs (training, infer.py, serve.py) and the table is printed."""
import json
import subprocess
import sys

from tests.conftest import REPO


def test_gpu_smoke_dry_run_on_the_cpu(tmp_path):
    """The CT rows read the model the training row just wrote (--checkpoint), the tumor rows the release."""
    out = tmp_path / "smoke"
    trained = out / "train_ct_tiny_eager" / "last.safetensors"
    done = subprocess.run([sys.executable, "-m", "eval.gpu_smoke", "--device", "cpu", "--configs", "ct_tiny",
                           "--steps", "2", "--limit", "1", "--out", str(out),
                           "--checkpoint", f"ct={trained}"],
                          cwd=REPO, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((out / "smoke.json").read_text())
    rows = {r["what"]: r for r in report["rows"]}
    assert set(rows) == {"train ct_tiny", "infer.py --task ct --device cpu", "infer.py --task tumor --device cpu",
                         "serve.py --task ct --device cpu", "serve.py --task tumor --device cpu"}
    assert all(r["ok"] for r in rows.values())
    assert rows["train ct_tiny"]["images_per_s"] > 0
    assert "| train ct_tiny | yes |" in done.stdout
    assert json.loads((out / "infer_ct" / "metrics.json").read_text())["checkpoint"] == str(trained)
    assert json.loads((out / "infer_tumor" / "metrics.json").read_text())["checkpoint"].endswith("tumor_seg.safetensors")


def test_gpu_smoke_refuses_a_malformed_checkpoint_pair(tmp_path):
    done = subprocess.run([sys.executable, "-m", "eval.gpu_smoke", "--device", "cpu", "--checkpoint", "brain=x.pt",
                           "--out", str(tmp_path)], cwd=REPO, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--checkpoint 'brain=x.pt'" in done.stderr


def test_gpu_smoke_refuses_cuda_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    done = subprocess.run([sys.executable, "-m", "eval.gpu_smoke", "--out", str(tmp_path)], cwd=REPO,
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: --device cuda")
