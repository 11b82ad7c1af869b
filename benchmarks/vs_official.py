"""Inference speed against the official C-Tran code itself, same weights, same numerics.

``inference.py`` times ours against the official forward pass re-implemented from its description
(``reference.py``); this script times it against the official code, imported from a checkout the user
points to (``CTRAN_OFFICIAL=/path/to/C-Tran`` or ``--official PATH``; see ``official_code.py``). Without
one it says so and exits 0, writing nothing.

For each setting (input size, number of labels L, batch 1) it builds our C-Tran (ResNet-101, D = 2048,
random weights; speed does not depend on them) and the official ``CTranModel`` holding the same weights.
Ours runs as ``ctran.load`` prepares it (``optimize_for_inference``); both run at the same numerics: float32
NCHW, and bf16 autocast with channels-last where the hardware has bf16. The rows stop unless the two give
the same logits on mixed unknown/negative/positive states, then the calls are timed in interleaved rounds.
Each row records what it was measured against (the checkout and its commit) and on how many threads.

Run: ``CTRAN_OFFICIAL=/path/to/C-Tran .venv/bin/python benchmarks/vs_official.py --threads 2``
(writes ``benchmarks/results/vs_official.json``).
"""

from __future__ import annotations

import torch

from common import (
    Budget,
    base_parser,
    budget_from,
    machine_info,
    make_model,
    markdown_table,
    mixed_states,
    print_rows,
    setup,
    write_report,
)
from inference import HEADLINE_ROUNDS, bench, variants_for
from official_code import SKIP_MESSAGE, describe, official_checkout, official_from
from peak import machine_peaks

SETTINGS = [(448, 80, 1), (448, 1000, 1), (576, 80, 1), (576, 1000, 1)]
QUICK = [(224, 80, 1)]


def parse_args(argv: list[str] | None = None):
    p = base_parser(__doc__, "vs_official")
    p.add_argument(
        "--official",
        default=None,
        metavar="PATH",
        help="a checkout of the official C-Tran code (default: $CTRAN_OFFICIAL; neither: skipped)",
    )
    p.add_argument(
        "--variants", default="fp32,bf16_cl", help="comma-separated: fp32, fp32_cl, bf16_cl (default: both)"
    )
    p.add_argument(
        "--settings",
        default=None,
        metavar="SIZExLxB,...",
        help="e.g. 576x80x1 (default: 448 and 576 px, L = 80 and 1000, batch 1)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    checkout = official_checkout(args.official)
    if checkout is None:
        print(f"vs_official: {SKIP_MESSAGE}")
        return None
    device = setup(args)
    peaks = machine_peaks(device, args.quick)
    against = describe(checkout)
    settings = QUICK if args.quick else SETTINGS
    if args.settings:
        settings = [tuple(int(n) for n in item.split("x")) for item in args.settings.split(",")]
    rows = []
    for size, labels, batch in settings:
        model = make_model(labels).to(device)
        images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
        states = mixed_states(batch, labels, device=device)
        budget = budget_from(args, 30.0)
        if not args.quick:
            budget = Budget(budget.seconds, least=HEADLINE_ROUNDS, fixed=budget.fixed)
        variants = variants_for(device, args.variants, compile=False, first=False)
        name = f"official_r101_{size}_L{labels}_b{batch}"
        rows += bench(
            name,
            model,
            images,
            states,
            variants,
            peaks,
            budget,
            reference=lambda m: official_from(m, checkout),
            against=against,
        )
        print_rows(rows[-len(variants) :])
    print(f"ref = {against}, {torch.get_num_threads()} torch threads")
    print(markdown_table(rows))
    write_report(args.out, "vs_official", machine_info(device), rows, against=against)
    return {"rows": rows, "against": against}


if __name__ == "__main__":
    main()
