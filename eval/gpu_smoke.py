"""The GPU smoke check: the whole GPU path in one script, one table (under 8 minutes on one GPU).

    python -m eval.gpu_smoke                                   # on a GPU machine: CUDA, the GPU configs
    python -m eval.gpu_smoke --data-root ../shared/data        # the real data instead of generated data
    python -m eval.gpu_smoke --device cpu --configs ct_tiny,tumor_tiny --steps 2 --limit 2   # tests

For each config (default `ct_gpu`, `tumor_gpu`) it trains `--steps` optimiser steps, eagerly (`train.compile` is ignored
since 2026-12-07: compiled, most of the UNet got zero gradients on the CPU; the row used to run both settings),
with the config's precision (bf16) in a fresh process (`train_diffusion.py`, as `accelerate launch` would run it on
one device) and reads the images per second from the run's metrics.jsonl; then `infer.py --device D` on `--limit` CT
slices and tumor images with the released checkpoints (or `--checkpoint TASK=PATH`), and `serve.py --device D`
answering one real request per task.
Without `--data-root` (or `$DMIAI_DATA`) it writes generated data in the competition's layout under --out, so the
check needs nothing but the repository. Writes `smoke.json` and prints one Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from diffusion.data.synthetic import write_ct_layout, write_tumor_layout
from diffusion.errors import UserError, run_cli
from diffusion.tasks import get_task, task_names

REPO = Path(__file__).resolve().parent.parent


def generated_data(root: Path) -> Path:
    """Generated data big enough for the GPU configs' batches (64 per step)."""
    if not (root / "ct-inpainting").is_dir():
        write_ct_layout(root / "ct-inpainting", patients=12, slices=10, seed=0)
    if not (root / "tumor-segmentation").is_dir():
        write_tumor_layout(root / "tumor-segmentation", patients=12, controls=8, seed=1)
    return root


def run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return done, time.perf_counter() - start


def failure(done: subprocess.CompletedProcess) -> str:
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1][:160] if lines else f"exit {done.returncode}"


def train_row(config: str, steps: int, data: Path, out: Path, batch: int | None = None) -> dict:
    """`batch` overrides the config's batch size (the generated data is smaller than one GPU batch)."""
    run_dir = out / f"train_{config}_eager"
    cmd = [sys.executable, "train_diffusion.py", "--config", f"configs/{config}.yaml", "--out", str(run_dir),
           "--data-root", str(data), "--max-steps", str(steps),
           "--set", "data.val_patients=3", "--set", "train.val_slices=4",
           "--set", f"train.log_every={max(1, min(10, steps // 4))}",
           "--set", "train.val_every=1000000", "--set", "train.checkpoint_every=1000000"]
    if batch:
        cmd += ["--set", f"train.batch_size={batch}"]
    done, seconds = run(cmd, timeout=600)
    row = {"what": f"train {config}", "ok": done.returncode == 0,
           "seconds": round(seconds, 1)}
    if done.returncode:
        return {**row, "note": failure(done)}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in rows if "images_per_s" in r][1:] or \
        [r["images_per_s"] for r in rows if "images_per_s" in r]  # the first window holds the warm-up
    return {**row, "images_per_s": round(statistics.median(rates), 1) if rates else None,
            "note": f"{steps} steps, validation and checkpoint at the end"}


def checkpoint_args(checkpoint: str | None) -> list[str]:
    return ["--checkpoint", checkpoint] if checkpoint else []


def infer_row(task: str, device: str, limit: int, data: Path, out: Path, checkpoint: str | None = None) -> dict:
    target = out / f"infer_{task}"
    done, seconds = run([sys.executable, "infer.py", "--task", task, "--device", device, "--limit", str(limit),
                         "--data-root", str(data), "--out", str(target), *checkpoint_args(checkpoint)], timeout=600)
    row = {"what": f"infer.py --task {task} --device {device}", "ok": done.returncode == 0,
           "seconds": round(seconds, 1)}
    if done.returncode:
        return {**row, "note": failure(done)}
    metrics = json.loads((target / "metrics.json").read_text())
    score = {k: round(metrics[k], 3) for k in ("mae", "dice") if k in metrics}
    return {**row, "seconds_per_image_p95": round(metrics["seconds_per_image"]["p95"], 3),
            "note": f"{metrics['n']} images, {metrics['sampler']} E={metrics['ensemble']}, {score}"}


def request_body(task: str, data: Path) -> dict:
    """The first case of the data root as the task's competition request."""
    task = get_task(task)
    root, _ = task.layout.resolve_root(data)
    return task.codec.request_body(root, task.layout.list_cases(root)[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_row(task: str, device: str, data: Path, timeout: float = 300, checkpoint: str | None = None) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, "serve.py", "--task", task, "--device", device, "--port", str(port),
                               *checkpoint_args(checkpoint)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    row = {"what": f"serve.py --task {task} --device {device}", "ok": False}
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < timeout:  # the model loads and warms up before it listens
            if server.poll() is not None:
                return {**row, "note": (server.stdout.read().strip().splitlines() or ["exited"])[-1][:160]}
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                time.sleep(1)
        body = json.dumps(request_body(task, data)).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body,
                                         headers={"Content-Type": "application/json"})
        sent = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
            sampler = response.headers.get("X-Sampler")
        key = "reconstructed_image" if task == "ct" else "img"
        ok = isinstance(answer.get(key), str) and len(answer[key]) > 100
        return {**row, "ok": ok, "seconds": round(time.perf_counter() - sent, 3),
                "note": f"one request answered with {sampler}"}
    except OSError as exc:
        return {**row, "note": str(exc)[:160]}
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def parse_checkpoints(pairs: list[str]) -> dict[str, str]:
    """`TASK=PATH` pairs as {task: path}; one clear line for a malformed pair or an unknown task."""
    known = task_names()
    out = {}
    for pair in pairs:
        task, sep, path = pair.partition("=")
        if not sep or task not in known or not path:
            raise UserError(f"--checkpoint {pair!r}: expected TASK=PATH with TASK one of {', '.join(known)}")
        out[task] = path
    return out


def table(rows: list[dict]) -> str:
    lines = ["| check | ok | seconds | images / s | p95 s / image | note |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['what']} | {'yes' if r['ok'] else 'NO'} | {r.get('seconds', '')} | "
                     f"{r.get('images_per_s', '')} | {r.get('seconds_per_image_p95', '')} | {r.get('note', '')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--configs", default="ct_gpu,tumor_gpu", help="comma-separated config names in configs/")
    p.add_argument("--steps", type=int, default=100, help="optimiser steps per training row")
    p.add_argument("--limit", type=int, default=20, help="inputs per infer.py row")
    p.add_argument("--data-root", default=None, help="data folder (default $DMIAI_DATA, else generated data)")
    p.add_argument("--out", default="runs/gpu_smoke")
    p.add_argument("--checkpoint", action="append", default=[], metavar="TASK=PATH",
                   help="the checkpoint of a task's infer and serve rows instead of its release (repeatable), e.g. "
                        "ct=runs/gpu_smoke/train_ct_gpu_eager/last.safetensors: a path under --out that a training "
                        "row of this check writes is read once that row is done")
    args = p.parse_args(argv)
    checkpoints = parse_checkpoints(args.checkpoint)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu for a dry run)")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    real = args.data_root or os.environ.get("DMIAI_DATA")
    data = Path(real or generated_data(out / "data")).resolve()
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    rows = []
    for config in [c.strip() for c in args.configs.split(",") if c.strip()]:
        rows.append(train_row(config, args.steps, data, out, batch=None if real else 4))
        print(rows[-1], flush=True)
    for task in ("ct", "tumor"):
        rows.append(infer_row(task, args.device, args.limit, data, out, checkpoints.get(task)))
        print(rows[-1], flush=True)
    for task in ("ct", "tumor"):
        rows.append(serve_row(task, args.device, data, checkpoint=checkpoints.get(task)))
        print(rows[-1], flush=True)
    report = {"device": device_name, "torch": torch.__version__, "data": str(data), "rows": rows}
    (out / "smoke.json").write_text(json.dumps(report, indent=1))
    print(f"\n{device_name}, torch {torch.__version__}, data {data}\n")
    print(table(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    run_cli(main)
