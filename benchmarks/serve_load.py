"""Load check of ``ctran serve``: N concurrent loopback clients re-conditioning an image for T seconds.

Starts the real command (``ctran serve --port 0``, its own process) on 127.0.0.1 with the demo checkpoint,
uploads a digit scene and warms up with 20 untimed requests. Then, for each client count in ``--clients``,
that many threads run for ``--seconds``, each with its own keep-alive connection, posting random known sets
(up to 4 target labels, at most one context) to ``POST /api/images/{id}/condition`` back to back. Each
request is timed from send to parsed answer; a non-200 status or a failed request counts as an error.
Reported per client count: p50/p95/p99/max latency, requests per second and errors. The target (issue 7)
is zero errors and p95 under 100 ms.

Traffic goes to loopback only (``--url`` must be a loopback address), loops are bounded in time and in
requests (``--max-requests`` per client count), and the server started here is stopped at the end.

Run: ``.venv/bin/python benchmarks/serve_load.py`` (needs runs/demo/ctran.pt: ``make demo``, or for a quick
latency check ``ctran demo --out /tmp/demo_serve --sizes 1200,300,600 --epochs 2 --quiet`` and
``--checkpoint /tmp/demo_serve/ctran.pt``). Results: benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import torch
from PIL import Image

from ctran.data.digit_scenes import generate_split
from ctran.report import write_json
from ctran.serving.server import is_loopback

MAX_CLIENTS = 64
MAX_SECONDS = 300


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("runs/demo/ctran.pt"), help="served checkpoint")
    p.add_argument("--url", default=None, help="use a running server on loopback instead of starting one")
    p.add_argument("--clients", default="1,8", help="comma-separated client counts (default: 1,8)")
    p.add_argument("--seconds", type=float, default=10.0, help="duration per client count (default: 10)")
    p.add_argument("--max-requests", type=int, default=50_000, help="cap per client count (default: 50000)")
    p.add_argument("--target-p95-ms", type=float, default=100.0, help="p95 latency target (default: 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_load.json"), help="JSON output")
    args = p.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not args.clients or min(args.clients) < 1 or max(args.clients) > MAX_CLIENTS:
        p.error(f"--clients must be counts between 1 and {MAX_CLIENTS}")
    if not 0 < args.seconds <= MAX_SECONDS or args.max_requests < 1:
        p.error(f"--seconds must be in (0, {MAX_SECONDS}] and --max-requests positive")
    if args.url and not is_loopback(urlsplit(args.url).hostname or ""):
        p.error(f"--url must be on this machine's loopback (127.0.0.1, localhost, ::1), got {args.url}")
    if not args.url and not args.checkpoint.is_file():
        p.error(f"{args.checkpoint}: no checkpoint; run `make demo` or pass --checkpoint")
    return args


@contextmanager
def started_server(checkpoint: Path, *options: str) -> Iterator[tuple[str, int]]:
    """``ctran serve`` on a free loopback port in a child process; yields (URL, pid), stops it on exit."""
    with tempfile.TemporaryDirectory() as folder:
        info = Path(folder) / "serve.json"
        command = [sys.executable, "-m", "ctran", "serve", "--checkpoint", str(checkpoint), "--port", "0"]
        process = subprocess.Popen([*command, *options, "--json", str(info)], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not info.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("ctran serve did not start (see its message above)")
                time.sleep(0.1)
            url = json.loads(info.read_text())["url"]
            wait_healthy(url, deadline)
            yield url, process.pid
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_healthy(url: str, deadline: float) -> None:
    while True:
        try:
            if httpx.get(url + "healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer /healthz")
        time.sleep(0.1)


def upload_scene(url: str, warm_up: int = 20) -> tuple[str, list[str], list[str]]:
    """Upload a digit scene and re-condition it ``warm_up`` times (untimed); (image id, targets, extras)."""
    buffer = io.BytesIO()
    Image.fromarray(generate_split("test", 0, 1).images[0]).save(buffer, format="PNG")
    with httpx.Client(base_url=url, timeout=30) as client:
        labels = client.get("/api/labels").raise_for_status().json()
        files = {"file": ("scene.png", buffer.getvalue(), "image/png")}
        image_id = client.post("/api/images", files=files).raise_for_status().json()["id"]
        for _ in range(warm_up):
            client.post(f"/api/images/{image_id}/condition", json={}).raise_for_status()
    return image_id, labels["targets"], labels["extras"]


def known_set(rng: random.Random, targets: list[str], extras: list[str]) -> dict:
    """A random request body: up to 4 known targets and at most one known extra label."""
    known = {name: rng.random() < 0.5 for name in rng.sample(targets, rng.randint(0, min(4, len(targets))))}
    extra = {rng.choice(extras): True} if extras and rng.random() < 0.5 else {}
    return {"known": known, "extra": extra}


def run_clients(url: str, image_id: str, targets: list[str], extras: list[str], args, clients: int) -> dict:
    """``clients`` threads posting /condition until the time or the request budget runs out."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    budget = iter(range(args.max_requests))
    deadline = time.monotonic() + args.seconds
    path = f"/api/images/{image_id}/condition"

    def client(index: int) -> None:
        rng = random.Random(args.seed * 1000 + index)
        with httpx.Client(base_url=url, timeout=10) as http:
            while time.monotonic() < deadline:
                with lock:
                    if next(budget, None) is None:
                        return
                body = known_set(rng, targets, extras)
                start = time.perf_counter()
                try:
                    response = http.post(path, json=body)
                    response.json()
                    problem = (
                        None if response.status_code == 200 else f"{response.status_code} {response.text}"
                    )
                except httpx.HTTPError as err:
                    problem = f"{type(err).__name__}: {err}"
                elapsed = (time.perf_counter() - start) * 1000
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        errors.append(problem)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    q = np.percentile(latencies, [50, 95, 99]) if latencies else [float("nan")] * 3
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:5],
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(float(q[0]), 2),
        "p95_ms": round(float(q[1]), 2),
        "p99_ms": round(float(q[2]), 2),
        "max_ms": round(max(latencies), 2) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with started_server(args.checkpoint) if args.url is None else _given(args.url) as (url, _):
        image_id, targets, extras = upload_scene(url)
        rows = []
        for clients in args.clients:
            rows.append(run_clients(url, image_id, targets, extras, args, clients))
            row = rows[-1]
            print(
                f"{clients:>3} clients: {row['requests']} requests in {row['seconds']} s "
                f"({row['requests_per_s']}/s), p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms, "
                f"p99 {row['p99_ms']} ms, max {row['max_ms']} ms, errors {row['errors']}"
            )
    passed = all(r["errors"] == 0 and r["p95_ms"] < args.target_p95_ms for r in rows)
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": "cpu",
        },
        "server": {"checkpoint": str(args.checkpoint) if args.url is None else None, "url": url},
        "endpoint": "POST /api/images/{id}/condition",
        "target": {"errors": 0, "p95_ms_below": args.target_p95_ms},
        "passed": passed,
        "rows": rows,
    }
    write_json(args.out, result)
    verdict = "met" if passed else "NOT met"
    print(f"target (0 errors, p95 < {args.target_p95_ms:g} ms): {verdict}; wrote {args.out}")
    return result


@contextmanager
def _given(url: str) -> Iterator[tuple[str, None]]:
    yield (url if url.endswith("/") else url + "/"), None


if __name__ == "__main__":
    sys.exit(0 if main()["passed"] else 1)
