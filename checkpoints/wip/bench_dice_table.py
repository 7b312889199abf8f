"""The threshold x size sweep (`eval.calibrate.dice_table`) before and after one component pass per threshold
(2026-12-07): the same 30 generated tumor-sized maps (991 x 400, smooth blobs) through both, timed side by side, the
tables compared for equality. The implementation before is read from git (`BEFORE`, default 6b97d88).

    python checkpoints/wip/bench_dice_table.py [BEFORE]
"""
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from eval import calibrate


def before(commit: str):
    source = subprocess.run(["git", "show", f"{commit}:eval/calibrate.py"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    path = Path(tempfile.mkdtemp()) / "calibrate_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("calibrate_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def maps(n=30, seed=1):
    rng = np.random.default_rng(seed)
    probabilities, labels, images = [], [], []
    for _ in range(n):
        z = cv2.GaussianBlur(rng.normal(size=(991, 400)).astype(np.float32), (0, 0), 6)
        z = (z - z.mean()) / z.std()
        probabilities.append(1 / (1 + np.exp(-(z * 3 - 5))))
        labels.append((z + 0.2 * rng.normal(size=z.shape) > 2.0).astype(np.uint8))
        images.append(np.clip(255 - 80 * (z + 3), 0, 255).astype(np.uint8))
    return probabilities, labels, images


if __name__ == "__main__":
    old = before(sys.argv[1] if len(sys.argv) > 1 else "6b97d88")
    probabilities, labels, images = maps()
    for fraction in (0.0, 0.3):
        times, tables = [], []
        for module in (old, calibrate):
            start = time.perf_counter()
            tables.append(module.dice_table(probabilities, labels, images=images, uptake_fraction=fraction))
            times.append(time.perf_counter() - start)
        print(f"uptake_fraction {fraction}: before {times[0]:.2f} s, after {times[1]:.2f} s, "
              f"{times[0] / times[1]:.1f}x, identical tables: {np.array_equal(*tables)}")
