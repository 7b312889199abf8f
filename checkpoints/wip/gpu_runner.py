"""What the one-call GPU recipes share (`tumor_gpu_folds.py`, `ct_gpu_wide.py`): several `train_diffusion.py` runs
side by side on one lent GPU inside a fixed time budget. A probe measures the steps per second with every run
stepping, then each phase gets a whole cosine schedule sized to its share of the budget (`train.max_steps` from the
probe, so the learning rate anneals to zero; `--max-minutes` only as a safety). A run that fails stops its phase
early with its log, so the rest of the device time is not spent; the slim weights come back tarred and split below
the device tool's file size, with the logs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

PROBE_LIMIT = 150      # seconds the probe waits for every run to log a step
RUN_OVERHEAD = 30      # seconds a phase loses to its start (data, CUDA), the final validation and the save
ArgsOf = Callable[[str], list]  # a run's name -> its train_diffusion.py arguments


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def launch(out: Path, args: list[str], minutes: float | None = None) -> subprocess.Popen:
    """One `train_diffusion.py` run in its own process group, its output in `<out>.log`."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "train_diffusion.py", "--out", str(out), *args]
    if minutes is not None:
        cmd += ["--max-minutes", f"{minutes:.2f}"]
    with open(f"{out}.log", "w") as log_file:  # the command first: where each run started from is in its log
        log_file.write(" ".join(cmd) + "\n")
    return subprocess.Popen(cmd, stdout=open(f"{out}.log", "a"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def schedule(steps: int) -> list[str]:
    """A whole schedule of `steps`: validated and saved once, at its end."""
    return ["--set", f"train.max_steps={steps}", "--set", f"train.val_every={steps}",
            "--set", f"train.checkpoint_every={steps}"]


def last_step(run: Path) -> int | None:
    try:
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    except (OSError, ValueError):
        return None
    return lines[-1]["step"] if lines else None


def tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").replace("\r", "\n").splitlines()[-n:])
    except OSError:
        return "(no log)"


def failed(procs: dict, runs: dict) -> bool:
    bad = [k for k, p in procs.items() if p.poll() not in (None, 0)]
    for k in bad:
        log(f"run {k} exited with {procs[k].returncode}:\n{tail(Path(f'{runs[k]}.log'))}")
    return bool(bad)


def kill(procs: dict) -> None:
    for p in procs.values():
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    for p in procs.values():
        p.wait()


def probe(runs: dict[str, Path], args_of: ArgsOf, seconds: float) -> float | None:
    """Steps per second of the slowest run with all of them side by side (None when one failed or never stepped)."""
    start = time.time()
    procs = {k: launch(runs[k], [*args_of(k), *schedule(100000)]) for k in runs}
    first = steps = None
    while time.time() < start + PROBE_LIMIT:
        time.sleep(2)
        if failed(procs, runs):
            kill(procs)
            return None
        steps = [last_step(r) for r in runs.values()]
        if first is None and all(s is not None for s in steps):
            first = (time.time(), steps)
        elif first and time.time() - first[0] >= seconds:
            break
    kill(procs)
    if not first:
        log(f"probe: the runs never logged a step in {PROBE_LIMIT} s")
        return None
    rate = min((b - a) for a, b in zip(first[1], steps)) / (time.time() - first[0])
    log(f"probe: {rate:.2f} steps/s per run with {len(runs)} side by side (steps {steps})")
    return rate


def steps_until(rate: float, end: float, floor: int) -> int:
    """The steps a phase ending at `end` can schedule (90 % of the probe's rate, its overhead taken off)."""
    return max(floor, int(0.9 * rate * (end - time.time() - RUN_OVERHEAD)) // 10 * 10)


def phase(name: str, runs: dict[str, Path], steps: int, args_of: ArgsOf, end: float) -> bool:
    """Train the runs side by side to `steps`; False when one failed."""
    minutes = (end - time.time()) / 60 + 0.25
    procs = {k: launch(runs[k], [*args_of(k), *schedule(steps)], minutes) for k in runs}
    log(f"{name}: {steps} steps per run, safety stop in {minutes:.1f} min")
    while any(p.poll() is None for p in procs.values()):
        time.sleep(5)
        if failed(procs, runs):
            kill(procs)
            return False
        log(f"{name}: steps {[last_step(r) for r in runs.values()]}")
    return not failed(procs, runs)


def pack_weights(out: Path, work: Path, name: str, files: dict[str, Path]) -> None:
    """The runs' slim weights as `<out>/<name>.tar.partNN` (15 MB pieces: `cat part* | tar -x` joins them); nothing
    when one is missing."""
    if not all(f.is_file() for f in files.values()):
        return
    archive = work / f"{name}.tar"
    with tarfile.open(archive, "w") as tar:
        for arcname, f in files.items():
            tar.add(f, arcname=arcname)
    subprocess.run(["split", "-b", "15M", "-d", str(archive), str(out / f"{name}.tar.part")], check=True)


def pack_logs(out: Path, work: Path, patterns: tuple[str, ...]) -> None:
    with tarfile.open(out / "logs.tgz", "w:gz") as tar:
        for pattern in patterns:
            for f in work.glob(pattern):
                tar.add(f, arcname=str(f.relative_to(work)))


def start_smoke(work: Path, configs: str, extra: str) -> subprocess.Popen:
    """The repository's GPU smoke check (`eval.gpu_smoke`) beside the first minutes of training."""
    return subprocess.Popen([sys.executable, "-m", "eval.gpu_smoke", "--configs", configs, "--steps", "20",
                             "--limit", "4", "--out", str(work / "smoke"), *extra.split()],
                            stdout=open(work / "smoke.log", "w"), stderr=subprocess.STDOUT)


def finish_smoke(smoke: subprocess.Popen | None, work: Path, deadline: float, ok: bool) -> None:
    """Wait for the smoke check until `deadline` (two more minutes at most after a failed run) and print its end."""
    if smoke is None:
        return
    wait = deadline - time.time()
    try:
        smoke.wait(timeout=max(1.0, wait if ok else min(wait, 120)))
    except subprocess.TimeoutExpired:
        smoke.kill()
    log(f"smoke check:\n{tail(work / 'smoke.log', 30)}")
