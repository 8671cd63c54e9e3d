"""Numenta Anomaly Benchmark: data loading, scoring and a runner, written from NAB's documented rules.

Layout (as in NAB): ``<root>/data/<category>/<file>.csv`` (``timestamp,value``),
``<root>/labels/combined_windows.json`` and results as
``<results>/<detector>/<category>/<detector>_<file>.csv`` (``timestamp,anomaly_score``).

Scoring rules implemented here:

* each anomaly window ``[start, end]`` (inclusive) earns, for its earliest detection, ``A_TP`` scaled
  by a sigmoid of the detection's relative position (1 at the window's start, ~0 at its end);
* a window without a detection costs ``A_FN``;
* a detection outside every window costs ``A_FP`` (full cost before the first window and far from
  the previous window, less just after a window, following the same sigmoid);
* the first 15 % of each file (at most 750 rows) is a probation period: rows there are ignored;
* one threshold per profile, chosen over all files together (exhaustive over the distinct score
  values, which is what NAB's sweep does), then the raw sum is normalised so that the null detector
  (no detections) scores 0 and the perfect detector (every window at its start) scores 100.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROFILES: dict[str, dict[str, float]] = {
    # NAB's cost matrices; A_FP is applied as a negative weight.
    "standard": {"tp": 1.0, "fp": 0.11, "tn": 1.0, "fn": 1.0},
    "reward_low_FP_rate": {"tp": 1.0, "fp": 0.22, "tn": 1.0, "fn": 1.0},
    "reward_low_FN_rate": {"tp": 1.0, "fp": 0.11, "tn": 1.0, "fn": 2.0},
}
PROBATION_PERCENT = 0.15


def scaled_sigmoid(x: float) -> float:
    """NAB's scaled sigmoid: +0.987 at x=-1 (window start), 0 at x=0, -> -1 for x>0; exactly -1 past 3."""
    if x > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


MAX_TP = scaled_sigmoid(-1.0)


def probation_length(n: int, percent: float = PROBATION_PERCENT) -> int:
    """Rows ignored at the start of a file: 15 % of it, capped at 15 % of 5000 rows."""
    return int(min(math.floor(percent * n), percent * 5000))


# ----------------------------------------------------------------------------------------- data


@dataclass
class NabFile:
    name: str  # "<category>/<file>.csv"
    timestamps: np.ndarray  # datetime64[s]
    values: np.ndarray  # float64
    windows: list[tuple[np.datetime64, np.datetime64]]

    @property
    def epoch_seconds(self) -> np.ndarray:
        return self.timestamps.astype("datetime64[s]").astype(np.int64).astype(np.float64)


def _read_two_columns(path: Path) -> tuple[list[str], list[float]]:
    ts: list[str] = []
    vals: list[float] = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        next(reader)  # header
        for row in reader:
            if not row:
                continue
            ts.append(row[0])
            vals.append(float(row[1]))
    return ts, vals


def _to_dt(strings: Iterable[str]) -> np.ndarray:
    return np.array([s.strip() for s in strings], dtype="datetime64[s]")


def list_files(data_dir: Path) -> list[str]:
    """Relative names ``category/file.csv`` of every data file, sorted."""
    root = Path(data_dir) / "data"
    return sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.csv"))


def load_windows(data_dir: Path) -> dict[str, list[tuple[np.datetime64, np.datetime64]]]:
    raw = json.loads((Path(data_dir) / "labels" / "combined_windows.json").read_text())
    return {
        name: [(np.datetime64(a.strip().replace(" ", "T"), "s"), np.datetime64(b.strip().replace(" ", "T"), "s"))
               for a, b in wins]
        for name, wins in raw.items()
    }


def load_corpus(data_dir: Path, names: Iterable[str] | None = None) -> list[NabFile]:
    data_dir = Path(data_dir)
    windows = load_windows(data_dir)
    out = []
    for name in names if names is not None else list_files(data_dir):
        ts, vals = _read_two_columns(data_dir / "data" / name)
        out.append(NabFile(name, _to_dt(ts), np.asarray(vals, dtype=np.float64), windows.get(name, [])))
    return out


# -------------------------------------------------------------------------------------- scoring


@dataclass
class FileLabels:
    """Per-row scoring terms of one file (profile independent)."""

    window: np.ndarray  # int: window index within the file, -1 outside every window
    base: np.ndarray  # float: in a window, sigmoid/MAX_TP (1.0 at start); outside, the FP sigmoid (<= 0)
    scored: np.ndarray  # bool: False in the probation period
    n_windows: int


def label_file(timestamps: np.ndarray, windows: list[tuple[np.datetime64, np.datetime64]]) -> FileLabels:
    n = len(timestamps)
    window = np.full(n, -1, dtype=np.int64)
    base = np.full(n, -1.0)
    idx = np.arange(n)
    bounds = []
    for k, (start, end) in enumerate(windows):
        lo = int(np.searchsorted(timestamps, start, side="left"))
        hi = int(np.searchsorted(timestamps, end, side="right")) - 1
        if hi < lo:
            continue
        width = hi - lo + 1
        window[lo:hi + 1] = k
        pos = -(hi - idx[lo:hi + 1] + 1) / width
        base[lo:hi + 1] = (2.0 / (1.0 + np.exp(5.0 * pos)) - 1.0) / MAX_TP
        bounds.append((lo, hi, width))
    # Outside windows: penalty relative to the preceding window's right edge.
    for j, (lo, hi, width) in enumerate(bounds):
        nxt = bounds[j + 1][0] if j + 1 < len(bounds) else n
        seg = idx[hi + 1:nxt]
        if len(seg) == 0:
            continue
        if width > 1:
            x = (seg - hi) / float(width - 1)
            b = 2.0 / (1.0 + np.exp(5.0 * np.minimum(x, 50.0))) - 1.0
            b[x > 3.0] = -1.0
        else:
            b = np.full(len(seg), -1.0)
        base[hi + 1:nxt] = b
    scored = idx >= probation_length(n)
    return FileLabels(window, base, scored, len(windows))


@dataclass
class Sweep:
    """All scored rows of a corpus, ready for threshold search."""

    scores: np.ndarray
    window: np.ndarray  # global window id, -1 outside
    base: np.ndarray
    n_windows: int


def build_sweep(pairs: Iterable[tuple[np.ndarray, FileLabels]]) -> Sweep:
    s_parts, w_parts, b_parts = [], [], []
    offset = 0
    for scores, lab in pairs:
        scores = np.asarray(scores, dtype=np.float64)
        if len(scores) != len(lab.window):
            raise ValueError("scores and labels differ in length")
        if not np.all(np.isfinite(scores)):
            raise ValueError("anomaly scores must be finite")
        m = lab.scored
        w = lab.window[m]
        s_parts.append(scores[m])
        w_parts.append(np.where(w >= 0, w + offset, -1))
        b_parts.append(lab.base[m])
        offset += lab.n_windows
    return Sweep(np.concatenate(s_parts), np.concatenate(w_parts), np.concatenate(b_parts), offset)


def sweep_thresholds(sw: Sweep, profile: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Raw score for every candidate threshold (detections = rows with score >= threshold).

    Returns (thresholds descending, raw scores); the first entry is "no detection" (threshold inf).
    """
    tp_w, fp_w, fn_w = profile["tp"], profile["fp"], profile["fn"]
    order = np.argsort(-sw.scores, kind="stable")
    s = sw.scores[order]
    w = sw.window[order]
    b = sw.base[order]
    n = len(s)
    delta = np.where(w < 0, fp_w * b, 0.0)  # FP contributions (b <= 0)
    # Window contributions: the running max of base within each window, in descending-score order.
    for wid in np.unique(w[w >= 0]):
        pos = np.nonzero(w == wid)[0]
        runmax = np.maximum.accumulate(b[pos])
        prev = np.concatenate(([np.nan], runmax[:-1]))
        before = np.where(np.isnan(prev), -fn_w, tp_w * prev)
        after = tp_w * runmax
        delta[pos] += after - before
    cum = np.cumsum(delta)
    # Evaluate after the last row of each group of equal scores.
    last_of_group = np.nonzero(np.r_[s[1:] != s[:-1], True])[0] if n else np.array([], dtype=np.int64)
    null = -fn_w * sw.n_windows
    thresholds = np.r_[np.inf, s[last_of_group]]
    raw = np.r_[null, null + cum[last_of_group]]
    return thresholds, raw


def normalise(raw: float, n_windows: int, profile: Mapping[str, float]) -> float:
    null = -profile["fn"] * n_windows
    perfect = profile["tp"] * n_windows
    return 100.0 * (raw - null) / (perfect - null)


def optimise(sw: Sweep, profile: Mapping[str, float]) -> tuple[float, float, float]:
    """Best (threshold, raw score, normalised score) for one profile over the whole corpus."""
    thr, raw = sweep_thresholds(sw, profile)
    k = int(np.argmax(raw))
    return float(thr[k]), float(raw[k]), normalise(float(raw[k]), sw.n_windows, profile)


def score_at(sw: Sweep, threshold: float, profile: Mapping[str, float]) -> float:
    """Raw score at a fixed threshold (for checks)."""
    det = sw.scores >= threshold
    total = float(profile["fp"] * sw.base[det & (sw.window < 0)].sum())
    for wid in range(sw.n_windows):
        m = det & (sw.window == wid)
        total += profile["tp"] * float(sw.base[m].max()) if m.any() else -profile["fn"]
    return total


def read_results(path: Path) -> tuple[np.ndarray, np.ndarray]:
    ts, vals = _read_two_columns(path)
    return _to_dt(ts), np.asarray(vals, dtype=np.float64)


def score_detector(
    results: Path | Mapping[str, np.ndarray],
    data_dir: Path,
    profiles: Mapping[str, Mapping[str, float]] = PROFILES,
    detail: bool = False,
) -> dict:
    """NAB scores of one detector, per profile (threshold optimised per profile over all files).

    ``results`` is either a NAB results directory of one detector
    (``<dir>/<category>/<detector>_<file>.csv``) or a mapping ``file name -> scores array``.
    With ``detail`` the value per profile is ``{"score", "threshold", "raw"}``.
    """
    data_dir = Path(data_dir)
    corpus = load_corpus(data_dir)
    pairs = []
    for f in corpus:
        if isinstance(results, Mapping):
            scores = np.asarray(results[f.name], dtype=np.float64)
        else:
            rdir = Path(results)
            cat, fname = f.name.split("/")
            path = rdir / cat / f"{rdir.name}_{fname}"
            r_ts, scores = read_results(path)
            if len(r_ts) != len(f.timestamps) or not np.array_equal(r_ts, f.timestamps):
                raise ValueError(f"{path}: timestamps differ from the data file")
        pairs.append((scores, label_file(f.timestamps, f.windows)))
    sw = build_sweep(pairs)
    out: dict = {}
    for name, prof in profiles.items():
        thr, raw, norm = optimise(sw, prof)
        out[name] = {"score": norm, "threshold": thr, "raw": raw} if detail else norm
    return out


# --------------------------------------------------------------------------------------- runner


def _score_of(result) -> float:
    return float(result.score) if hasattr(result, "score") else float(result)


def run_detector(
    factory: Callable[[], object],
    corpus: list[NabFile],
    out_dir: Path | None = None,
    detector_name: str = "detector",
) -> tuple[dict[str, np.ndarray], float]:
    """Run a fresh detector (``factory()``, with ``update(ts, value)``) over every file.

    Returns ({file name: scores}, points per second of the update calls). With ``out_dir``, writes
    ``<out_dir>/<detector_name>/<category>/<detector_name>_<file>.csv``.
    """
    results: dict[str, np.ndarray] = {}
    elapsed = 0.0
    points = 0
    for f in corpus:
        det = factory()
        ts = f.epoch_seconds.tolist()
        vals = f.values.tolist()
        update = det.update
        t0 = time.perf_counter()
        scores = [_score_of(update(t, v)) for t, v in zip(ts, vals)]
        elapsed += time.perf_counter() - t0
        points += len(vals)
        results[f.name] = np.asarray(scores)
        if out_dir is not None:
            write_results(Path(out_dir), detector_name, f, results[f.name])
    return results, points / elapsed if elapsed > 0 else float("inf")


def write_results(out_dir: Path, detector_name: str, f: NabFile, scores: np.ndarray) -> Path:
    cat, fname = f.name.split("/")
    path = out_dir / detector_name / cat / f"{detector_name}_{fname}"
    path.parent.mkdir(parents=True, exist_ok=True)
    stamps = np.datetime_as_string(f.timestamps, unit="s")
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "anomaly_score"])
        for t, s in zip(stamps, scores):
            w.writerow([str(t).replace("T", " "), repr(float(s))])
    return path
