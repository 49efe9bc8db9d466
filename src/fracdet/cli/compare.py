"""``fracdet compare``: two evaluations of the same films, B − A with paired bootstrap intervals."""

from __future__ import annotations

import argparse
from typing import Any


def add_compare(sub: Any) -> None:
    p = sub.add_parser("compare", help="compare two `fracdet evaluate` folders of the same films: B − A per metric, "
                                       "paired 95%% bootstrap intervals")
    p.add_argument("a", metavar="EVAL_A", help="evaluation folder of model A (the reference)")
    p.add_argument("b", metavar="EVAL_B", help="evaluation folder of model B (the candidate)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="paired resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--out", metavar="JSON", help="also write the comparison as JSON")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(a: argparse.Namespace) -> int:
    from fracdet.comparison import compare_folders, format_comparison
    from fracdet.errors import FracdetError

    if a.bootstrap < 1:
        raise FracdetError(f"--bootstrap {a.bootstrap}: give at least 1 resample")
    result = compare_folders(a.a, a.b, a.bootstrap, a.seed)
    print(format_comparison(result))
    if a.out:
        from fracdet.fsutil import write_json

        write_json(a.out, result)
        print(f"written: {a.out}")
    return 0
