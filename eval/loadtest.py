"""Load test: N concurrent clients replay real cases from a data root against a running server.

    python serve.py --task ct &          # in another shell
    python -m eval.loadtest --task ct --data-root ../shared/data --clients 4 --seconds 60

Each client posts one request after another (competition format) until the time is up; the report gives
throughput, p50/p95/max latency and the error count, as JSON (and into --out if given).
"""
from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from diffusion.errors import run_cli
from diffusion.tasks import get_task, task_names


def request_bodies(task, root: Path, n: int) -> list[bytes]:
    """The first n cases of the data root as the task's competition requests."""
    return [json.dumps(task.codec.request_body(root, case)).encode() for case in task.layout.list_cases(root)[:n]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=task_names())
    p.add_argument("--data-root", default=None)
    p.add_argument("--url", default="http://127.0.0.1:9050/predict")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--cases", type=int, default=20, help="distinct cases to replay")
    p.add_argument("--timeout", type=float, default=60.0, help="client-side timeout per request")
    p.add_argument("--out", default=None, help="write the report JSON here too")
    args = p.parse_args(argv)
    task = get_task(args.task)
    root, _ = task.layout.resolve_root(args.data_root)
    bodies = request_bodies(task, root, args.cases)
    latencies: list[float] = []
    errors: list[str] = []
    settings: dict[str, int] = {}  # the X-Sampler header: the setting the server used (degraded ones included)
    lock = threading.Lock()
    stop_at = time.time() + args.seconds

    def client(k: int) -> None:
        i = k
        while time.time() < stop_at:
            request = urllib.request.Request(args.url, data=bodies[i % len(bodies)],
                                             headers={"Content-Type": "application/json"})
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=args.timeout) as response:
                    response.read()
                    ok = response.status == 200
                    used = response.headers.get("X-Sampler", "?")
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                ok, reason = False, f"{type(exc).__name__}: {exc}"
            else:
                reason = "" if ok else f"HTTP {response.status}"
            with lock:
                (latencies.append(time.perf_counter() - start) if ok else errors.append(reason))
                if ok:
                    settings[used] = settings.get(used, 0) + 1
            i += args.clients

    started = time.time()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - started
    lat = np.asarray(latencies) if latencies else np.zeros(1)
    report = {"task": args.task, "clients": args.clients, "wall_s": round(wall, 1), "requests": len(latencies),
              "errors": len(errors), "throughput_per_s": round(len(latencies) / wall, 3),
              "latency_s": {"p50": round(float(np.percentile(lat, 50)), 3),
                            "p95": round(float(np.percentile(lat, 95)), 3), "max": round(float(lat.max()), 3)},
              "settings": settings, "first_errors": errors[:3]}
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0 if not errors else 1


if __name__ == "__main__":
    run_cli(main)
