"""How long ``ctran --help`` and ``ctran --version`` take, and which heavy libraries they import.

A command line that waits seconds to print its help gets in the way; the target is under 1 s. Each command
runs in a fresh interpreter (``python -m ctran ...``), the commands alternating every round, against a bare
``python -c pass`` for the interpreter's own start-up. The libraries check runs the same parsing in one
interpreter and lists which of torch, torchvision, matplotlib, timm, numpy, PIL, fastapi and sklearn
ended up in ``sys.modules``.

Run: ``.venv/bin/python benchmarks/cli_startup.py`` (writes ``benchmarks/results/cli_startup.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_S = 1.0
HEAVY = ("torch", "torchvision", "matplotlib", "timm", "numpy", "PIL", "fastapi", "sklearn")
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "ctran --help": ["-m", "ctran", "--help"],
    "ctran --version": ["-m", "ctran", "--version"],
    "ctran evaluate --help": ["-m", "ctran", "evaluate", "--help"],
}
IMPORT_CHECK = (
    "import sys\nfrom ctran.cli import main\n"
    "for argv in (['--help'], ['--version'], ['train', '--help']):\n"
    "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
    f"print('imported:', ','.join(m for m in {HEAVY!r} if m in sys.modules))"
)


def time_once(args: list[str]) -> float:
    """Wall time of one fresh interpreter running ``args``, output discarded."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def heavy_imports() -> list[str]:
    """The heavy libraries imported while parsing ``--help``, ``--version`` and ``train --help``."""
    out = subprocess.run([sys.executable, "-c", IMPORT_CHECK], check=True, capture_output=True, text=True)
    line = out.stdout.strip().splitlines()[-1]  # "imported: torch,numpy" after the help texts
    return [name for name in line.removeprefix("imported:").strip().split(",") if name]


def measure(repeats: int) -> dict[str, dict]:
    """Median, min and max seconds per command, the commands interleaved (A B C, C B A, ...)."""
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    names = list(COMMANDS)
    for name in names:  # warm the file cache, untimed
        time_once(COMMANDS[name])
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            times[name].append(time_once(COMMANDS[name]))
    return {
        name: {
            "median_s": round(statistics.median(values), 3),
            "min_s": round(min(values), 3),
            "max_s": round(max(values), 3),
        }
        for name, values in times.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=None, help="rounds (default: 10; 3 with --quick)")
    p.add_argument("--quick", action="store_true", help="3 rounds")
    p.add_argument("--out", type=Path, default=RESULTS / "cli_startup.json", help="JSON file to write")
    args = p.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 10)
    rows = measure(repeats)
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "repeats": repeats,
        "target_s": TARGET_S,
        "commands": rows,
        "heavy_imports_while_parsing": heavy_imports(),
    }
    print("| command | median s | min s | max s |\n|---|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| `{name}` | {row['median_s']:.2f} | {row['min_s']:.2f} | {row['max_s']:.2f} |")
    heavy = ", ".join(result["heavy_imports_while_parsing"]) or "none"
    print(f"heavy libraries imported by parsing: {heavy}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(rows[n]["median_s"] < TARGET_S for n in rows if n.startswith("ctran")) else 1


if __name__ == "__main__":
    sys.exit(main())
