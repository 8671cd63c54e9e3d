"""Deterministic grouped K-fold split: every group (a rule's `service`) lands in exactly one fold.

Greedy and stratified: strata (here: the category) are handled rarest first; inside a stratum
the groups go largest first (ties by name) to the fold holding the fewest items of that stratum,
then the fewest items overall, then the lowest index. No randomness: the same input always gives
the same folds, whatever the order of the items.

    python -m pagerstream.models.eval.splits --data rules_flat.jsonl [--extra business.jsonl]
prints the fold of each service and the per-fold counts.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

K = 5


def assign_folds(items: Iterable[tuple[str, str]], k: int = K) -> dict[str, int]:
    """items: (group, stratum) per item -> {group: fold}. A group's stratum is its most common
    one (ties by name)."""
    if k < 2:
        raise ValueError("k must be at least 2")
    per_group: dict[str, Counter[str]] = defaultdict(Counter)
    for group, stratum in items:
        per_group[group][stratum] += 1
    stratum_of = {g: min(c.items(), key=lambda t: (-t[1], t[0]))[0] for g, c in per_group.items()}
    size = {g: sum(c.values()) for g, c in per_group.items()}
    strata: dict[str, list[str]] = defaultdict(list)
    for g, s in stratum_of.items():
        strata[s].append(g)
    fold_total = [0] * k
    fold_stratum: list[Counter[str]] = [Counter() for _ in range(k)]
    out: dict[str, int] = {}
    for s in sorted(strata, key=lambda s: (sum(size[g] for g in strata[s]), s)):
        for g in sorted(strata[s], key=lambda g: (-size[g], g)):
            f = min(range(k), key=lambda i: (fold_stratum[i][s], fold_total[i], i))
            out[g] = f
            fold_total[f] += size[g]
            fold_stratum[f][s] += size[g]
    return out


def split_indices(
    groups: Sequence[str], strata: Sequence[str], k: int = K
) -> list[tuple[list[int], list[int]]]:
    """Per fold: (train item indices, test item indices)."""
    folds = assign_folds(zip(groups, strata), k)
    return [
        (
            [i for i, g in enumerate(groups) if folds[g] != f],
            [i for i, g in enumerate(groups) if folds[g] == f],
        )
        for f in range(k)
    ]


def main(argv: list[str] | None = None) -> None:
    from .classify import find_extra, load_items  # local import: classify imports this module

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--extra", type=Path, action="append", default=None)
    ap.add_argument("--k", type=int, default=K)
    args = ap.parse_args(argv)
    items = load_items(args.data, find_extra(args.data) if args.extra is None else args.extra)
    folds = assign_folds(((it.group, it.stratum) for it in items), args.k)
    per_fold: dict[int, Counter[str]] = defaultdict(Counter)
    for it in items:
        per_fold[folds[it.group]][it.stratum] += 1
    for f in range(args.k):
        groups = sorted(g for g, i in folds.items() if i == f)
        print(
            f"fold {f}: {sum(per_fold[f].values())} items {dict(sorted(per_fold[f].items()))} "
            f"{len(groups)} groups"
        )
    for g in sorted(folds):
        print(f"{folds[g]}\t{g}")


if __name__ == "__main__":
    main()
