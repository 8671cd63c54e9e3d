"""Evaluation of the transient-alert model (auto-pause / auto-resolution) on NAB.

Protocol
--------
Episodes (`threshold_episodes`): on every series a static threshold rule fires alerts. The
threshold comes from the first 15 % of the file (NAB's probation period): mean +/- K * std with
K = 3. Two alert types per file: `<file>|high` (value above mean + K std) and `<file>|low` (below
mean - K std). An episode starts at the first point past the threshold (only after the probation
period) and ends (resolves) at the M-th consecutive point back inside (M = 2), so its duration
includes that short clear-hysteresis. An episode still firing at the end of the file stays open.

Truth (scoring only, never shown to the model): an episode overlapping a labelled anomaly window
(labels/combined_windows.json, inclusive) is real, else noise.

Replay: one model for all files; within a file the events (start, pause check, end) are replayed
in time order, so the model sees every alert type's episodes in order and learns from an episode
only once it has ended. The model decides at start (page now / pause until start + W); a paused
episode still open at start + W is paged then.

Scoring: baseline pages every episode at its start. A real window counts as paged if an episode
overlapping it was paged at a time <= the window's end (so pausing delays, and could lose, a page).
Noise pages = paged episodes overlapping no window. Delay = page time - episode start of the first
counted page of each paged window (0 for the baseline, 0 or W for the model).
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import statistics
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pagerstream.models.transient import VERSION, TransientModel

K_STD = 3.0  # threshold = mean +/- K_STD * std of the probation period
M_CLEAR = 2  # points back inside the threshold that resolve an episode
PROBATION = 0.15  # leading fraction of each file used for the threshold (no alerts there)
PAUSE_MIN = 30.0  # headline pause window W (minutes)
P_PAUSE = 0.8  # pause when P(resolve within W) >= this
MIN_EPISODES = 3  # finished episodes of a type before it may be paused
CURVE_W_MIN = (10.0, 15.0, 30.0, 60.0, 120.0)
CURVE_P = (0.7, 0.8, 0.9)
GOAL_WINDOWS = 30  # real windows the model must still page
GOAL_NOISE_RATIO = 0.25  # model noise pages <= this * baseline noise pages


@dataclass
class Episode:
    alert_type: str
    file: str
    direction: str  # "high" | "low"
    start_ts: float
    end_ts: float | None  # resolution time; None = still open at the end of the file
    file_end_ts: float
    start_excess: float  # (|z| - K) at the first point, in probation stds
    peak_excess: float  # over the whole episode (reported only, not used to decide)
    features: dict[str, float] = field(default_factory=dict)  # causal, known at start

    @property
    def last_ts(self) -> float:
        return self.end_ts if self.end_ts is not None else self.file_end_ts


def _ts(s: str) -> float:
    return datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()


def read_series(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return np.array([_ts(r[0]) for r in rows]), np.array([float(r[1]) for r in rows])


def threshold_episodes(
    name: str,
    ts: np.ndarray,
    values: np.ndarray,
    k: float = K_STD,
    m: int = M_CLEAR,
    probation: float = PROBATION,
) -> list[Episode]:
    """Alert episodes of the static rule on one series (see the module docstring), both
    directions, sorted by start time. Threshold: mean +/- k * std of the first `probation`
    fraction; episodes start after it; an episode ends at the m-th consecutive point back inside."""
    n = len(values)
    p = max(2, int(probation * n))
    mu = float(values[:p].mean())
    sd = float(values[:p].std())
    if sd <= 0:  # a flat probation period: any move of 1e-6 * scale alerts
        sd = 1e-6 * max(1.0, abs(mu))
    z = (values - mu) / sd
    out: list[Episode] = []
    for direction, sign in (("high", 1.0), ("low", -1.0)):
        excess = sign * z - k
        firing = excess > 0
        alert_type = f"{name}|{direction}"
        starts: list[float] = []
        last_end: float | None = None
        i = p
        while i < n:
            if not firing[i]:
                i += 1
                continue
            s, j, clear = i, i, 0
            while j < n:
                clear = 0 if firing[j] else clear + 1
                if clear >= m:
                    break
                j += 1
            end = float(ts[j]) if j < n else None
            t0 = float(ts[s])
            feats = {
                "start_excess": float(excess[s]),
                "hour": float(datetime.fromtimestamp(t0, UTC).hour),
                "hours_since_last": (t0 - last_end) / 3600 if last_end is not None else -1.0,
                "starts_last_24h": float(sum(1 for x in starts if t0 - x <= 86400)),
            }
            out.append(
                Episode(
                    alert_type=alert_type,
                    file=name,
                    direction=direction,
                    start_ts=t0,
                    end_ts=end,
                    file_end_ts=float(ts[-1]),
                    start_excess=float(excess[s]),
                    peak_excess=float(excess[s : min(j, n)].max()),
                    features=feats,
                )
            )
            starts.append(t0)
            last_end = end
            i = j + 1
    out.sort(key=lambda e: (e.start_ts, e.direction))
    return out


def load(data: Path) -> tuple[dict[str, list[Episode]], dict[str, list[tuple[float, float]]]]:
    files = (data / "files.txt").read_text().split()
    windows_raw = json.loads((data / "labels" / "combined_windows.json").read_text())
    episodes: dict[str, list[Episode]] = {}
    windows: dict[str, list[tuple[float, float]]] = {}
    for f in files:
        ts, vals = read_series(data / "data" / f)
        episodes[f] = threshold_episodes(f, ts, vals)
        windows[f] = [(_ts(a), _ts(b)) for a, b in windows_raw.get(f, [])]
    return episodes, windows


def replay(episodes: dict[str, list[Episode]], model: TransientModel) -> list[dict[str, Any]]:
    """Run the model causally over every file; returns one record per episode."""
    records: list[dict[str, Any]] = []
    for eps in episodes.values():
        recs = [
            {
                "alert_type": e.alert_type,
                "start_ts": e.start_ts,
                "end_ts": e.end_ts,
                "peak_excess": round(e.peak_excess, 3),
                "features": e.features,
                "paged": False,
                "page_ts": None,
            }
            for e in eps
        ]
        # (time, order, kind, index): at equal times an end is seen before a pause check, both before starts.
        heap: list[tuple[float, int, str, int]] = []
        for i, e in enumerate(eps):
            heap.append((e.start_ts, 2, "start", i))
            if e.end_ts is not None:
                heap.append((e.end_ts, 0, "end", i))
        heapq.heapify(heap)
        while heap:
            t, _, kind, i = heapq.heappop(heap)
            e, r = eps[i], recs[i]
            if kind == "start":
                d = model.on_start(e.alert_type, t, e.features)
                r["decision"] = "page_now" if d.page_now else "pause"
                r["pause_until"] = d.pause_until
                r["evidence"] = d.evidence
                if d.page_now:
                    r["paged"], r["page_ts"], r["outcome"] = True, t, "paged_now"
                else:
                    heapq.heappush(heap, (float(d.pause_until), 1, "check", i))
            elif kind == "check":
                still_open = e.end_ts is None or e.end_ts > t
                if model.should_page(e.alert_type, e.start_ts, t, still_open):
                    r["paged"], r["page_ts"], r["outcome"] = True, t, "paged_after_pause"
                else:
                    r["outcome"] = "auto_resolved"
            else:
                model.on_end(e.alert_type, e.start_ts, t, {"peak_excess": e.peak_excess})
        records.extend(recs)
    return records


def score(
    episodes: dict[str, list[Episode]],
    windows: dict[str, list[tuple[float, float]]],
    records: list[dict[str, Any]] | None,
) -> dict[str, float]:
    """Score one policy (records=None: baseline, page every episode at its start)."""
    it = iter(records) if records is not None else None
    n_win = reach = paged_win = noise = real_pages = pages = delayed_win = 0
    delays: list[float] = []
    latency: list[float] = []
    for f, eps in episodes.items():
        wins = windows[f]
        n_win += len(wins)
        first_page: dict[int, tuple[float, float]] = {}
        reached: set[int] = set()
        for e in eps:
            r = next(it) if it is not None else {"paged": True, "page_ts": e.start_ts}
            ov = [w for w, (a, b) in enumerate(wins) if e.start_ts <= b and e.last_ts >= a]
            reached.update(ov)
            if r is not None:
                r["real"] = bool(ov)
            if not r["paged"]:
                continue
            pages += 1
            if not ov:
                noise += 1
                continue
            real_pages += 1
            for w in ov:
                if r["page_ts"] <= wins[w][1] and (w not in first_page or r["page_ts"] < first_page[w][0]):
                    first_page[w] = (r["page_ts"], r["page_ts"] - e.start_ts)
        reach += len(reached)
        paged_win += len(first_page)
        for w, (pt, dl) in first_page.items():
            delays.append(dl / 60)
            delayed_win += dl > 0
            latency.append((pt - wins[w][0]) / 60)
    return {
        "windows_total": float(n_win),
        "windows_reachable": float(reach),
        "windows_paged": float(paged_win),
        "noise_pages": float(noise),
        "real_pages": float(real_pages),
        "pages": float(pages),
        "windows_first_paged_after_pause": float(delayed_win),
        "median_page_delay_min": float(statistics.median(delays)) if delays else float("nan"),
        "mean_page_delay_min": float(statistics.fmean(delays)) if delays else float("nan"),
        "median_latency_from_window_start_min": float(statistics.median(latency))
        if latency
        else float("nan"),
    }


def run_model(
    episodes, windows, pause_min: float, p_pause: float, **kw: Any
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    model = TransientModel(pause_s=pause_min * 60, p_pause=p_pause, min_episodes=MIN_EPISODES, **kw)
    recs = replay(episodes, model)
    res = score(episodes, windows, recs)
    res["paused"] = float(sum(1 for r in recs if r.get("decision") == "pause"))
    res["paused_then_paged"] = float(sum(1 for r in recs if r.get("decision") == "pause" and r["paged"]))
    return res, recs


def evaluate(data: Path, out: Path | None = None, quick: bool = False) -> dict[str, float]:
    data = Path(data)
    episodes, windows = load(data)
    base = score(episodes, windows, None)
    mod, recs = run_model(episodes, windows, PAUSE_MIN, P_PAUSE)
    n_eps = sum(len(v) for v in episodes.values())

    cmd = f"python -m pagerstream.models.eval.transient --data {data}" + (" --quick" if quick else "")
    ok_win = mod["windows_paged"] >= GOAL_WINDOWS
    ok_noise = mod["noise_pages"] <= GOAL_NOISE_RATIO * base["noise_pages"]
    print(f"transient model {VERSION} on NAB ({len(episodes)} files, {n_eps} episodes)")
    print(
        f"episode rule: threshold = mean +/- {K_STD:g} std of first {PROBATION:.0%}; ends after {M_CLEAR} points back"
    )
    print(
        f"model: pause W = {PAUSE_MIN:g} min when P(resolve within W) >= {P_PAUSE} (>= {MIN_EPISODES} episodes)"
    )
    print(f"{'metric':40s} {'baseline':>10s} {'model':>10s}")
    rows = [
        ("real windows total", "windows_total"),
        ("real windows reachable (any episode)", "windows_reachable"),
        ("real windows paged (page <= window end)", "windows_paged"),
        ("noise pages", "noise_pages"),
        ("pages on real episodes", "real_pages"),
        ("pages total", "pages"),
        ("real windows first paged after a pause", "windows_first_paged_after_pause"),
        ("median page delay, real windows (min)", "median_page_delay_min"),
        ("mean page delay, real windows (min)", "mean_page_delay_min"),
        ("median first page - window start (min)", "median_latency_from_window_start_min"),
    ]
    for label, key in rows:
        print(f"{label:40s} {base[key]:10.1f} {mod[key]:10.1f}")
    print(f"{'paused / paused then paged':40s} {'':>10s} {mod['paused']:5.0f}/{mod['paused_then_paged']:.0f}")
    print(
        f"goal: real windows paged >= {GOAL_WINDOWS}: {mod['windows_paged']:.0f}  {'PASS' if ok_win else 'BELOW'}"
    )
    print(
        f"goal: noise pages <= {GOAL_NOISE_RATIO:g} x baseline ({GOAL_NOISE_RATIO * base['noise_pages']:.0f}): "
        f"{mod['noise_pages']:.0f}  {'PASS' if ok_noise else 'BELOW'}"
    )

    result = {f"baseline_{k}": v for k, v in base.items()} | {f"model_{k}": v for k, v in mod.items()}
    result |= {
        "episodes": float(n_eps),
        "goal_windows_pass": float(ok_win),
        "goal_noise_pass": float(ok_noise),
    }

    if not quick:
        print("trade-off (W min, p): windows paged / noise pages / median delay min")
        for w in CURVE_W_MIN:
            cells = []
            for p in CURVE_P:
                r, _ = run_model(episodes, windows, w, p)
                cells.append(
                    f"p={p}: {r['windows_paged']:3.0f} /{r['noise_pages']:5.0f} /{r['median_page_delay_min']:5.1f}"
                )
                result[f"curve_w{w:g}_p{p:g}_windows"] = r["windows_paged"]
                result[f"curve_w{w:g}_p{p:g}_noise"] = r["noise_pages"]
            print(f"  W={w:4g}  " + "   ".join(cells))
        r, _ = run_model(episodes, windows, PAUSE_MIN, P_PAUSE, adaptive=True)
        print(
            f"  adaptive pause (shortest d <= W={PAUSE_MIN:g} with P >= {P_PAUSE}): "
            f"{r['windows_paged']:.0f} / {r['noise_pages']:.0f} / {r['median_page_delay_min']:.1f}"
        )
        result["adaptive_windows"], result["adaptive_noise"] = r["windows_paged"], r["noise_pages"]
    print(f"command: {cmd}")

    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "transient_episodes.jsonl").open("w") as fh:
            for r in recs:
                fh.write(json.dumps(r) + "\n")
        (out / "transient_summary.json").write_text(json.dumps(result, indent=2))
        print(f"wrote {out / 'transient_episodes.jsonl'}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="NAB folder (with files.txt, data/, labels/)")
    ap.add_argument("--out", type=Path, default=None, help="folder for transient_episodes.jsonl")
    ap.add_argument("--quick", action="store_true", help="headline setting only, no trade-off curve")
    a = ap.parse_args(argv)
    res = evaluate(a.data, a.out, a.quick)
    return 0 if res["goal_windows_pass"] and res["goal_noise_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
