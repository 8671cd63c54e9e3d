"""Alert grouping (models/correlate.py) on the AIT alert data set.

    python -m pagerstream.models.eval.correlate --data /work/shared/data/ait_alerts [--out DIR] [--quick]

``--data`` is the ait_alerts folder, the zip inside it, or one ``<scenario>_alerts.csv``. The zip is
read member by member through ``zipfile`` + ``csv`` (nothing is extracted). Each scenario is its own
stream with a fresh correlator; rows are fed in time order (each CSV is a few time-sorted runs, they
are merged lazily with ``heapq.merge``), one pass, and the model never sees ``time_label``.

Ground truth: a class is (scenario, time_label). ``false_positive`` is one class per scenario.
Metrics (scikit-learn definitions, natural log):

* strict: homogeneity / completeness / V on all alerts. Completeness here also asks that all of a
  scenario's background noise (days of unrelated benign alerts on ~150 host x type streams) sit in
  one group, which no inactivity-based grouping does; it is reported, not the goal.
* goal (``h``, ``c``, ``v``): homogeneity on all alerts (mixing background into an attack group, or
  two phases together, costs), completeness on attack-phase alerts only (each phase should stay in
  few groups; background may be split).
* compression = alerts / groups, over all alerts and all groups.
* phases owning a group: attack phases for which some group's majority class is that phase.
* diagnostic ``c_evt``: completeness on attack-phase alerts matched to an attacker action
  (``event_label`` != "-"). Many phase alerts (most of dnsteal, cracking, network_scans) are the
  hosts' ordinary background streams that happen to fall in the phase's time window; ``c_evt``
  shows how well the alerts the attack actually caused stay together.

``overall`` pools the scenarios (classes and groups kept apart per scenario). Pooling flatters both h
and c: telling the scenarios apart is free, and it adds to H(C) and H(K) but to neither conditional
entropy. So the table also gives the mean and the worst scenario. The exit status follows the pooled
goals. ``--quick`` runs the two smaller scenarios (russellmitchell, santos: 176k alerts).
"""

from __future__ import annotations

import argparse
import csv
import heapq
import io
import itertools
import json
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
from pagerstream.models.correlate import VERSION, AlertCorrelator

GOAL_COMPRESSION = 300.0
GOAL_H = 0.95
GOAL_C = 0.95
FP = "false_positive"
QUICK_SCENARIOS = ("russellmitchell", "santos")
FIELDS = ("time", "name", "ip", "host", "short")
PARAMS: dict = {}  # AlertCorrelator defaults
LEGEND = """\
classes = (scenario, time_label); false_positive is one class per scenario.
h = homogeneity on all alerts; c = completeness on attack-phase alerts; v = their harmonic mean;
*_str = homogeneity / completeness / V all on all alerts; c_evt = completeness on the alerts matched to an
attacker action (event_label); compression = alerts / groups; phases = attack phases owning a group."""


# ---------------------------------------------------------------------------------------- metrics
def _entropy(counts: np.ndarray) -> float:
    counts = counts[counts > 0].astype(np.float64)
    n = counts.sum()
    if n <= 0:
        return 0.0
    p = counts / n
    return float(-(p * np.log(p)).sum())


def contingency(classes, clusters) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency table: (class index, cluster index, count) of the non-empty cells, plus the
    class names and cluster names the indices refer to. Never dense, so 10^6 clusters are fine."""
    classes = np.asarray(classes)
    clusters = np.asarray(clusters)
    if classes.shape != clusters.shape or classes.ndim != 1:
        raise ValueError("classes and clusters must be 1-d and of equal length")
    c_names, ci = np.unique(classes, return_inverse=True)
    k_names, ki = np.unique(clusters, return_inverse=True)
    cells, counts = np.unique(ci.astype(np.int64) * max(len(k_names), 1) + ki, return_counts=True)
    return cells // max(len(k_names), 1), cells % max(len(k_names), 1), counts, c_names, k_names


def homogeneity_completeness_v(classes, clusters) -> tuple[float, float, float]:
    """Homogeneity 1 - H(C|K)/H(C), completeness 1 - H(K|C)/H(K), V = their harmonic mean.

    Same definitions and edge cases as scikit-learn (natural log; h = 1 when H(C) = 0, c = 1 when
    H(K) = 0; empty input gives 1, 1, 1).
    """
    row, col, nij, c_names, k_names = contingency(classes, clusters)
    n = nij.sum()
    if n == 0:
        return 1.0, 1.0, 1.0
    n_c = np.bincount(row, weights=nij, minlength=len(c_names))
    n_k = np.bincount(col, weights=nij, minlength=len(k_names))
    h_c, h_k = _entropy(n_c), _entropy(n_k)
    p = nij / n
    h_c_given_k = float(-(p * np.log(nij / n_k[col])).sum())
    h_k_given_c = float(-(p * np.log(nij / n_c[row])).sum())
    h = 1.0 if h_c == 0 else 1.0 - h_c_given_k / h_c
    c = 1.0 if h_k == 0 else 1.0 - h_k_given_c / h_k
    v = 0.0 if h + c == 0 else 2 * h * c / (h + c)
    return h, c, v


def phases_owning_group(classes, clusters, ignore=()) -> tuple[int, int, list]:
    """(owned, total, missing): classes (minus ``ignore``) that are the majority class of some cluster.

    A tie inside a cluster goes to the class that sorts first.
    """
    row, col, nij, c_names, _ = contingency(classes, clusters)
    order = np.lexsort((row, -nij, col))  # by cluster, then largest count, then class
    first = np.r_[True, np.diff(col[order]) != 0] if order.size else np.zeros(0, dtype=bool)
    owners = set(row[order][first].tolist())
    skip = set(ignore)
    wanted = [i for i, c in enumerate(c_names.tolist()) if c not in skip]
    missing = [c_names[i].item() for i in wanted if i not in owners]
    return len(wanted) - len(missing), len(wanted), missing


# ---------------------------------------------------------------------------------------- reading
def sources(data: Path) -> list[tuple[str, Callable[[], TextIO]]]:
    """(scenario, opener) for every ``<scenario>_alerts.csv`` in a folder, a zip, or one CSV."""
    data = Path(data)
    if data.is_dir():
        out = []
        for p in sorted(data.iterdir()):
            if p.suffix == ".zip" or p.name.endswith("_alerts.csv"):
                out.extend(sources(p))
        return out
    if data.suffix == ".zip":
        zf = zipfile.ZipFile(data)
        names = [n for n in zf.namelist() if n.endswith(".csv")]

        def opener(n: str) -> Callable[[], TextIO]:
            return lambda: io.TextIOWrapper(zf.open(n), encoding="utf-8", newline="")

        return [(Path(n).name.split("_alerts")[0], opener(n)) for n in names]
    if data.suffix == ".csv" and data.is_file():
        return [(data.name.split("_alerts")[0], lambda: open(data, encoding="utf-8", newline=""))]
    raise FileNotFoundError(f"no alert CSVs at {data}")


def _rows(open_text: Callable[[], TextIO], start: int = 0, stop: int | None = None) -> Iterator[tuple]:
    """(time, alert, time_label, event_matched) for data rows [start, stop) of one CSV."""
    with open_text() as f:
        r = csv.reader(f)
        header = next(r)
        it_, in_, ii_, ih_, is_ = (header.index(k) for k in FIELDS)
        il, ie = header.index("time_label"), header.index("event_label")
        for row in itertools.islice(r, start, stop):
            t = float(row[it_])
            alert = {"time": t, "name": row[in_], "ip": row[ii_], "host": row[ih_], "short": row[is_]}
            yield t, alert, row[il], row[ie] not in ("-", "")


def read_stream(open_text: Callable[[], TextIO]) -> Iterator[tuple[dict, str, bool]]:
    """One CSV's rows in time order (stable), without loading the file.

    Pass 1 reads the time column to find where time-sorted runs start; the runs are then re-read lazily
    and merged. The AIT CSVs are two runs each (one host's alerts are appended at the end).
    """
    starts = [0]
    prev = float("-inf")
    with open_text() as f:
        r = csv.reader(f)
        col = next(r).index("time")
        for i, row in enumerate(r):
            t = float(row[col])
            if t < prev:
                starts.append(i)
            prev = t
    runs = [_rows(open_text, a, b) for a, b in zip(starts, starts[1:] + [None])]
    merged = runs[0] if len(runs) == 1 else heapq.merge(*runs, key=lambda x: x[0])
    for _, alert, label, matched in merged:
        yield alert, label, matched


# ---------------------------------------------------------------------------------------- evaluation
def run_scenario(open_text: Callable[[], TextIO], params: dict | None = None) -> dict:
    """Stream one scenario through a fresh correlator. Labels are kept aside and never passed in."""
    closed: list[dict] = []
    model = AlertCorrelator(**(params or PARAMS), on_close=closed.append)
    names: dict[str, int] = {}
    gids, cls, evt = [], [], []
    rules: Counter = Counter()
    peak_open = 0
    model_s = 0.0
    t_start = time.perf_counter()
    clock = time.perf_counter
    for alert, label, matched in read_stream(open_text):
        t0 = clock()
        a = model.add(alert)
        model_s += clock() - t0
        gids.append(a.group_id)
        cls.append(names.setdefault(label, len(names)))
        evt.append(matched)
        rules[a.reason["rule"]] += 1
        peak_open = max(peak_open, len(model))
    closed.extend(model.flush())
    return {
        "gids": np.asarray(gids, dtype=np.int64),
        "cls": np.asarray(cls, dtype=np.int64),
        "evt": np.asarray(evt, dtype=bool),
        "names": list(names),
        "groups": closed,
        "rules": rules,
        "peak_open": peak_open,
        "model_s": model_s,
        "wall_s": time.perf_counter() - t_start,
    }


def score(cls: np.ndarray, gids: np.ndarray, fp_codes, evt: np.ndarray | None = None) -> dict:
    """Metrics of one labelling; ``fp_codes`` are the class codes of false_positive classes."""
    att = ~np.isin(cls, list(fp_codes))
    h, c_strict, v_strict = homogeneity_completeness_v(cls, gids)
    c = homogeneity_completeness_v(cls[att], gids[att])[1] if att.any() else 1.0
    sel = att & evt if evt is not None else att
    c_evt = homogeneity_completeness_v(cls[sel], gids[sel])[1] if sel.any() else 1.0
    owned, total, missing = phases_owning_group(cls, gids, ignore=fp_codes)
    n_groups = int(np.unique(gids).size)
    return {
        "alerts": int(gids.size),
        "groups": n_groups,
        "compression": gids.size / max(n_groups, 1),
        "h": h,
        "c": c,
        "v": 0.0 if h + c == 0 else 2 * h * c / (h + c),
        "h_strict": h,
        "c_strict": c_strict,
        "v_strict": v_strict,
        "c_evt": c_evt,
        "phases_owned": owned,
        "phases": total,
        "missing": missing,
    }


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "BELOW"


def _goal_line(what: str, s: dict) -> str:
    return (
        f"goals ({what}): compression {s['compression']:.1f} >= {GOAL_COMPRESSION:.0f} "
        f"{_verdict(s['compression'] >= GOAL_COMPRESSION)}; homogeneity {s['h']:.3f} >= {GOAL_H} "
        f"{_verdict(s['h'] >= GOAL_H)}; completeness {s['c']:.3f} >= {GOAL_C} {_verdict(s['c'] >= GOAL_C)}"
    )


def evaluate(
    data: Path, out: Path | None = None, quick: bool = False, params: dict | None = None
) -> dict[str, float]:
    data = Path(data)
    srcs = sources(data)
    if quick:
        srcs = [s for s in srcs if s[0] in QUICK_SCENARIOS] or srcs[:1]
    if not srcs:
        raise FileNotFoundError(f"no <scenario>_alerts.csv in {data}")
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "correlate_groups.jsonl").write_text("")
    per: dict[str, dict] = {}
    pooled_cls, pooled_gids, pooled_evt, pooled_fp = [], [], [], []
    class_names: list[str] = []
    g_offset = 0
    model_s = wall_s = 0.0
    rules: Counter = Counter()
    peak_open = 0
    for scen, opener in srcs:
        r = run_scenario(opener, params)
        fp = [i for i, n in enumerate(r["names"]) if n == FP]
        s = score(r["cls"], r["gids"], fp, r["evt"])
        s["missing"] = [r["names"][i] for i in s["missing"]]
        per[scen] = s
        # pooled: classes and groups made unique per scenario
        base_c = len(class_names)
        class_names += [f"{scen}/{n}" for n in r["names"]]
        pooled_cls.append(r["cls"] + base_c)
        pooled_gids.append(r["gids"] + g_offset)
        g_offset += int(r["gids"].max()) + 1 if r["gids"].size else 0
        pooled_evt.append(r["evt"])
        pooled_fp += [base_c + i for i in fp]
        model_s += r["model_s"]
        wall_s += r["wall_s"]
        rules.update(r["rules"])
        peak_open = max(peak_open, r["peak_open"])
        if out is not None:
            _write_groups(out / "correlate_groups.jsonl", scen, r)
    overall = score(
        np.concatenate(pooled_cls), np.concatenate(pooled_gids), pooled_fp, np.concatenate(pooled_evt)
    )
    overall["missing"] = [class_names[i] for i in overall["missing"]]
    n = overall["alerts"]
    keys = ("compression", "h", "c", "v", "h_strict", "c_strict", "v_strict", "c_evt")
    mean = {k: float(np.mean([s[k] for s in per.values()])) for k in keys}
    worst = {k: float(min(s[k] for s in per.values())) for k in keys}

    results: dict[str, float] = {}
    for name, s in list(per.items()) + [("overall", overall)]:
        for k, v in s.items():
            if k != "missing":
                results[f"{k}_{name}"] = float(v)
    results.update({f"{k}_mean": v for k, v in mean.items()})
    results.update({k: float(overall[k]) for k in ("compression", "h", "c", "v", "c_strict")})
    results["alerts"] = float(n)
    results["alerts_per_s_model"] = n / max(model_s, 1e-9)
    results["alerts_per_s_end_to_end"] = n / max(wall_s, 1e-9)
    results["peak_open_groups"] = float(peak_open)

    cmd = (
        f"python -m pagerstream.models.eval.correlate --data {data}"
        + (f" --out {out}" if out else "")
        + (" --quick" if quick else "")
    )
    print(f"alert correlator {VERSION}; params {AlertCorrelator(**(params or PARAMS)).params}")
    print(LEGEND)
    print(
        f"{'scenario':<16} {'alerts':>9} {'groups':>6} {'compr':>7} {'h':>6} {'c':>6} {'v':>6} {'h_str':>6}"
        f" {'c_str':>6} {'v_str':>6} {'c_evt':>6} {'phases':>6}  phases not owning a group"
    )
    for name, s in list(per.items()) + [("overall", overall)]:
        print(
            f"{name:<16} {s['alerts']:9d} {s['groups']:6d} {s['compression']:7.1f} {s['h']:6.3f} {s['c']:6.3f}"
            f" {s['v']:6.3f} {s['h_strict']:6.3f} {s['c_strict']:6.3f} {s['v_strict']:6.3f} {s['c_evt']:6.3f}"
            f" {s['phases_owned']:3d}/{s['phases']:<3d} {', '.join(s['missing'])}"
        )
    print(
        f"{'mean':<16} {'':9} {'':6} {mean['compression']:7.1f} {mean['h']:6.3f} {mean['c']:6.3f} {mean['v']:6.3f}"
        f" {mean['h_strict']:6.3f} {mean['c_strict']:6.3f} {mean['v_strict']:6.3f} {mean['c_evt']:6.3f}"
    )
    print(_goal_line("overall, pooled", overall))
    print(_goal_line("mean of scenarios", mean))
    print(_goal_line("worst scenario", worst))
    print(
        f"strict completeness (all alerts, background one class per scenario): overall {overall['c_strict']:.3f}"
        f" {_verdict(overall['c_strict'] >= GOAL_C)}"
    )
    print(f"rules used: {dict(rules.most_common())}; peak open groups {peak_open}")
    print(
        f"throughput: {results['alerts_per_s_model']:,.0f} alerts/s in the model, "
        f"{results['alerts_per_s_end_to_end']:,.0f} alerts/s end to end (CSV parsing, run merge, model); "
        f"{n:,} alerts{' (quick subset)' if quick else ''}"
    )
    print(f"command: {cmd}")
    if out is not None:
        (out / "correlate_metrics.json").write_text(json.dumps(results, indent=2))
    return results


def _write_groups(path: Path, scen: str, r: dict) -> None:
    """One JSON line per group: the model's summary plus its label mix (joined here, after the run)."""
    gids, cls, names = r["gids"], r["cls"], r["names"]
    order = np.lexsort((cls, gids))
    g_sorted, c_sorted = gids[order], cls[order]
    mix: dict[int, Counter] = {}
    if order.size:
        pair_start = np.flatnonzero(np.r_[True, (np.diff(g_sorted) != 0) | (np.diff(c_sorted) != 0)])
        counts = np.diff(np.r_[pair_start, order.size])
        for i, k in zip(pair_start.tolist(), counts.tolist()):
            mix.setdefault(int(g_sorted[i]), Counter())[names[int(c_sorted[i])]] = k
    with open(path, "a", encoding="utf-8") as f:
        for g in sorted(r["groups"], key=lambda d: d["group_id"]):
            c = mix.get(g["group_id"], Counter())
            top, n_top = c.most_common(1)[0] if c else ("", 0)
            rec = {
                "scenario": scen,
                **g,
                "labels": dict(c.most_common()),
                "majority": top,
                "purity": n_top / max(g["count"], 1),
            }
            f.write(json.dumps(rec) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, required=True, help="ait_alerts folder, its zip, or one <scenario>_alerts.csv"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="write per-group summaries (JSONL) and metrics here"
    )
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_SCENARIOS)}")
    a = ap.parse_args(argv)
    res = evaluate(a.data, a.out, a.quick)
    ok = res["compression"] >= GOAL_COMPRESSION and res["h"] >= GOAL_H and res["c"] >= GOAL_C
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
