"""Summarise a ``mutmut run`` (``make mutants``): killed/survived per module, and every survivor's diff.

Reads the ``mutants/**/*.meta`` files mutmut leaves behind and writes ``report.json`` and ``report.md`` into
``--out``. Survivors are either killed by a new test or listed with the reason in ``docs/mutants.md``; the
report marks the ones listed there and counts the rest.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

# mutmut's exit-code convention (mutmut.stats.status_by_exit_code)
STATUS = {
    1: "killed",
    3: "killed",
    -24: "timeout",
    24: "timeout",
    0: "survived",
    5: "no tests",
    33: "no tests",
}


def read_results(mutants: Path) -> dict[str, str]:
    """{mutant name: status} over every mutated file."""
    results = {}
    for meta in sorted(mutants.rglob("*.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            results[name] = "not checked" if code is None else STATUS.get(code, f"exit {code}")
    return results


def module_of(mutant: str) -> str:
    """``ctran.training.losses.x_bce_terms__mutmut_3`` -> ``ctran.training.losses``."""
    return re.sub(r"\.(x_|x\u01c1)?[^.]*__mutmut_\d+$", "", mutant)


def listed_mutants(notes: Path) -> set[str]:
    """Survivors listed with their reason in docs/mutants.md (full names in backticks)."""
    if not notes.is_file():
        return set()
    return set(re.findall(r"`(ctran\.[\w.ǁ]+__mutmut_\d+)`", notes.read_text()))


def diff_of(mutant: str) -> str:
    shown = subprocess.run(["mutmut", "show", mutant], capture_output=True, text=True, check=False)
    return shown.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"), help="mutmut's work folder")
    parser.add_argument("--notes", type=Path, default=Path("docs/mutants.md"), help="equivalent mutants")
    parser.add_argument("--out", type=Path, default=Path("runs/mutants"), help="where the report goes")
    parser.add_argument("--no-diffs", action="store_true", help="skip the survivors' diffs (faster)")
    args = parser.parse_args()
    if not args.mutants.is_dir():
        print(f"{args.mutants} not found: run `mutmut run` (or `make mutants`) first", file=sys.stderr)
        return 2
    results = read_results(args.mutants)
    listed = listed_mutants(args.notes)
    per_module: dict[str, Counter] = defaultdict(Counter)
    for name, status in results.items():
        per_module[module_of(name)][status] += 1
    survivors = sorted(n for n, s in results.items() if s in {"survived", "no tests"})
    total = Counter(results.values())
    checked = total["killed"] + total["timeout"] + total["survived"] + total["no tests"]
    killed = total["killed"] + total["timeout"]
    summary = {
        "mutants": len(results),
        "checked": checked,
        "killed": killed,
        "score": round(100 * killed / checked, 1) if checked else None,
        "score_with_listed": round(100 * (killed + len(listed & set(survivors))) / checked, 1)
        if checked
        else None,
        "unlisted_survivors": len(set(survivors) - listed),
        "per_module": {module: dict(counts) for module, counts in sorted(per_module.items())},
        "survivors": [{"name": n, "listed": n in listed} for n in survivors],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# Mutation testing: {killed} of {checked} mutants killed ({summary['score']}%)",
        "",
        f"{len(listed & set(survivors))} survivors are listed with a reason in {args.notes} "
        f"(killed + listed: {summary['score_with_listed']}%); not listed: {summary['unlisted_survivors']}.",
        "",
        "| module | killed | timeout | survived | no tests |",
        "|---|---:|---:|---:|---:|",
    ]
    for module, counts in sorted(per_module.items()):
        cells = [counts[status] for status in ("killed", "timeout", "survived", "no tests")]
        lines.append(f"| {module} | " + " | ".join(map(str, cells)) + " |")
    lines += ["", "## Survivors", ""]
    for name in survivors:
        lines.append(f"### `{name}`{' (listed)' if name in listed else ' (NOT LISTED)'}")
        if not args.no_diffs:
            lines += ["", "```diff", diff_of(name), "```", ""]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: 3 + 3 + len(per_module)]))
    print(f"wrote {args.out / 'report.md'} and report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
