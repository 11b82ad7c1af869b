"""Soak test of ``ctran serve``: concurrent loopback clients for a bounded time; memory must stay bounded.

Starts ``ctran serve`` (its own process, 127.0.0.1, a small ``--cache-size``) and runs ``--clients`` threads
for ``--seconds``. Each client uploads a new random digit scene 30% of the time (so the feature cache keeps
evicting) and otherwise re-conditions one of its recent images (a 404 for an evicted id is expected and
not an error). The server's resident memory is sampled every second. After the warm-up third of the run
the cache is full, so memory should plateau: the check is that growth over the last two thirds stays below
``--max-growth-mb``. Reported: requests, errors (5xx or failed requests), p50/p95 latency, RSS samples.

Run: ``make soak`` (60 s) or ``.venv/bin/python benchmarks/serve_soak.py --seconds 20``.
Results: benchmarks/results/serve_soak.json.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from ctran.report import write_json
from serve_load import known_set, started_server

MAX_SECONDS = 600


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("runs/demo/ctran.pt"), help="served checkpoint")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default: 4)")
    p.add_argument("--seconds", type=float, default=60.0, help="duration (default: 60, at most 600)")
    p.add_argument("--cache-size", type=int, default=16, help="the server's feature cache (default: 16)")
    p.add_argument("--max-growth-mb", type=float, default=64.0, help="allowed RSS growth after warm-up")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_soak.json"), help="JSON output")
    args = p.parse_args(argv)
    args.seconds = min(args.seconds, MAX_SECONDS)
    return args


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def random_scene(rng: random.Random) -> bytes:
    """A 48 x 48 grey PNG of random blobs: a new image the cache has never seen."""
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (48, 48), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def client_loop(url: str, seed: int, stop: float, labels: dict, log: dict, lock: threading.Lock) -> None:
    rng, recent = random.Random(seed), []
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                if not recent or rng.random() < 0.3:
                    files = {"file": ("scene.png", random_scene(rng), "image/png")}
                    response = http.post("/api/images", files=files)
                    if response.status_code == 200:
                        recent = [*recent[-7:], response.json()["id"]]
                else:
                    body = known_set(rng, labels["targets"], labels["extras"])
                    response = http.post(f"/api/images/{rng.choice(recent)}/condition", json=body)
                failed = response.status_code >= 500 or response.status_code not in {200, 404}
            except httpx.HTTPError:
                failed = True
            with lock:
                log["latency"].append(time.perf_counter() - start)
                log["errors"] += failed


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    log, lock = {"latency": [], "errors": 0}, threading.Lock()
    with started_server(args.checkpoint, "--cache-size", str(args.cache_size)) as (url, pid):
        labels = httpx.get(url + "api/labels", timeout=30).json()
        start = time.monotonic()
        stop = start + args.seconds
        threads = [
            threading.Thread(target=client_loop, args=(url, seed, stop, labels, log, lock), daemon=True)
            for seed in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        samples = []
        while any(thread.is_alive() for thread in threads):
            samples.append((round(time.monotonic() - start, 1), round(rss_mb(pid), 1)))
            time.sleep(1.0)
        for thread in threads:
            thread.join()
    after_warm_up = [rss for t, rss in samples if t >= args.seconds / 3] or [samples[-1][1]]
    growth = max(after_warm_up) - after_warm_up[0]
    latency_ms = sorted(1000 * t for t in log["latency"])
    result = {
        "seconds": args.seconds,
        "clients": args.clients,
        "cache_size": args.cache_size,
        "requests": len(latency_ms),
        "errors": log["errors"],
        "p50_ms": round(statistics.median(latency_ms), 1),
        "p95_ms": round(latency_ms[int(0.95 * (len(latency_ms) - 1))], 1),
        "rss_mb": {
            "start": samples[0][1],
            "after_warm_up": after_warm_up[0],
            "peak": max(r for _, r in samples),
        },
        "growth_after_warm_up_mb": round(growth, 1),
        "max_growth_mb": args.max_growth_mb,
        "samples": samples,
    }
    result["passed"] = result["errors"] == 0 and growth < args.max_growth_mb
    write_json(args.out, result)
    print(
        f"{result['requests']} requests from {args.clients} clients in {args.seconds:g} s: "
        f"{result['errors']} errors, p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms; server RSS "
        f"{result['rss_mb']['start']} -> {result['rss_mb']['peak']} MB peak, {growth:.1f} MB growth after "
        f"warm-up (limit {args.max_growth_mb:g}): {'passed' if result['passed'] else 'FAILED'}; "
        f"wrote {args.out}"
    )
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["passed"] else 1)
