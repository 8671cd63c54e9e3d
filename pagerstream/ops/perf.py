"""`pagerstream perf`: a live terminal view of one worker, from its Prometheus `/metrics`.

Two scrapes `interval` seconds apart give rates (counter deltas / elapsed time) and latency quantiles
over that window (histogram bucket deltas, interpolated the way Prometheus' histogram_quantile does).
When nothing was observed in the window, the quantiles since the worker started are shown instead,
marked "(since start)". No curses: each frame clears the terminal with ANSI codes and is redrawn.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

CLEAR = "\x1b[H\x1b[2J"


@dataclass
class Snapshot:
    """The samples of one scrape: sample name -> [(labels, value)]."""

    at: float
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, at: float | None = None) -> Snapshot:
        from prometheus_client.parser import text_string_to_metric_families

        snap = cls(time.time() if at is None else at)
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                snap.samples.setdefault(smp.name, []).append((dict(smp.labels), float(smp.value)))
        return snap

    def get(self, name: str, **match: str) -> list[tuple[dict[str, str], float]]:
        return [(lb, v) for lb, v in self.samples.get(name, []) if all(lb.get(k) == x for k, x in match.items())]

    def total(self, name: str, **match: str) -> float:
        return sum(v for _, v in self.get(name, **match))

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for lb, v in self.get(name, **match):
            out[lb.get(label, "")] = out.get(lb.get(label, ""), 0.0) + v
        return out

    def has(self, name: str) -> bool:
        return name in self.samples


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """histogram_quantile over cumulative (upper bound, count) buckets, +Inf last. Linear interpolation
    inside the bucket; a rank in the +Inf bucket returns the highest finite bound (as Prometheus does).
    None when there are no observations."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                finite = [b for b, _ in buckets if not math.isinf(b)]
                return finite[-1] if finite else None
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return buckets[-1][0]


def histogram_buckets(snap: Snapshot, name: str, group: str | None = None,
                      **match: str) -> dict[str, list[tuple[float, float]]]:
    """Cumulative buckets of histogram `name`, summed per value of label `group` (or all under "")."""
    acc: dict[str, dict[float, float]] = {}
    for lb, v in snap.get(name + "_bucket", **match):
        key = lb.get(group, "") if group else ""
        le = float(lb["le"])
        acc.setdefault(key, {})
        acc[key][le] = acc[key].get(le, 0.0) + v
    return {k: sorted(d.items()) for k, d in acc.items()}


@dataclass
class Quantiles:
    p50: float | None
    p99: float | None
    count: float
    window: bool  # True: over the interval; False: since the worker started


def quantiles(cur: Snapshot, prev: Snapshot | None, name: str, group: str | None = None,
              **match: str) -> dict[str, Quantiles]:
    now = histogram_buckets(cur, name, group, **match)
    before = histogram_buckets(prev, name, group, **match) if prev else {}
    out: dict[str, Quantiles] = {}
    for key, bk in now.items():
        old = dict(before.get(key, []))
        delta = [(le, c - old.get(le, 0.0)) for le, c in bk]
        if prev is not None and delta and delta[-1][1] > 0:
            out[key] = Quantiles(bucket_quantile(0.5, delta), bucket_quantile(0.99, delta), delta[-1][1], True)
        elif bk and bk[-1][1] > 0:
            out[key] = Quantiles(bucket_quantile(0.5, bk), bucket_quantile(0.99, bk), bk[-1][1], False)
    return out


def rates(cur: Snapshot, prev: Snapshot | None, name: str, label: str, **match: str) -> dict[str, float]:
    """Per-second increase of counter `name` per value of `label` (0 when there is no earlier scrape)."""
    now = cur.by(name, label, **match)
    if prev is None:
        return {k: 0.0 for k in now}
    dt = max(cur.at - prev.at, 1e-9)
    old = prev.by(name, label, **match)
    return {k: max(0.0, v - old.get(k, 0.0)) / dt for k, v in now.items()}


def fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1:
        return f"{x:.2f} s"
    return f"{x * 1000:.1f} ms"


BREAKER = {0: "closed", 1: "half-open", 2: "OPEN"}


def render_frame(cur: Snapshot, prev: Snapshot | None, *, url: str = "", width: int = 100) -> str:
    """One frame of the view (plain text)."""
    dt = (cur.at - prev.at) if prev else 0.0
    ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(cur.at))
    head = f"pagerstream perf  {url}  {ts} UTC  " + (f"window {dt:.1f}s" if prev else "single scrape (no rates)")
    L = [head, "=" * min(width, len(head))]

    # ingest
    ing = rates(cur, prev, "pagerstream_ingress_requests_total", "status")
    http_total = sum(ing.values())
    by_class: dict[str, float] = {}
    for st, r in ing.items():
        by_class[(st[:1] + "xx") if st[:1].isdigit() else st] = by_class.get((st[:1] + "xx") if st[:1].isdigit()
                                                                             else st, 0.0) + r
    stage_rates = rates(cur, prev, "pagerstream_stage_records_total", "stage")
    dl_rate = sum(rates(cur, prev, "pagerstream_dead_letters_total", "stage").values())
    classes = ", ".join(f"{k} {v:.1f}" for k, v in sorted(by_class.items()) if v)
    L.append(f"INGEST     http {http_total:8.1f} req/s" + (f"  ({classes})" if classes else "") +
             f"   normalize {stage_rates.get('normalize', 0.0):.1f} rec/s"
             f"   dead letters {dl_rate:.1f}/s (total {cur.total('pagerstream_dead_letters_total'):.0f})")

    # lag
    lag = {t: v for t, v in cur.by("pagerstream_consumer_lag", "topic").items() if v}
    worst = sorted(lag.items(), key=lambda x: -x[1])
    lag_txt = "  ".join(f"{t} {v:.0f}" for t, v in worst[:4]) + (f"  (+{len(worst) - 4} topics)" if len(worst) > 4
                                                                  else "")
    L.append(f"LAG        total {sum(lag.values()):.0f}   {lag_txt or 'all assigned partitions caught up'}")

    # stages
    L.append("")
    L.append(f"{'STAGE':<22}{'rec/s':>10}{'p50':>12}{'p99':>12}  window")
    qs = quantiles(cur, prev, "pagerstream_stage_latency_seconds", "stage")
    for stage in sorted(set(qs) | set(stage_rates)):
        q = qs.get(stage)
        L.append(f"{stage:<22}{stage_rates.get(stage, 0.0):>10.1f}{fmt_s(q.p50 if q else None):>12}"
                 f"{fmt_s(q.p99 if q else None):>12}  {'' if q is None else ('interval' if q.window else '(since start)')}")
    e2e = quantiles(cur, prev, "pagerstream_end_to_end_latency_seconds").get("")
    if e2e:
        L.append(f"{'end-to-end (ingress->PD)':<22}{'':>10}{fmt_s(e2e.p50):>12}{fmt_s(e2e.p99):>12}  "
                 f"{'interval' if e2e.window else '(since start)'}")

    # PagerDuty
    L.append("")
    pd = rates(cur, prev, "pagerstream_pagerduty_requests_total", "outcome")
    pd_tot = cur.by("pagerstream_pagerduty_requests_total", "outcome")
    L.append("PAGERDUTY  calls/s " + (", ".join(f"{k} {v:.1f} (total {pd_tot.get(k, 0):.0f})"
                                               for k, v in sorted(pd.items())) or "none yet"))
    parked = cur.by("pagerstream_pagerduty_parked_total", "reason")
    if parked:
        L.append("           parked " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(parked.items())))
    wait = quantiles(cur, prev, "pagerstream_pagerduty_rate_wait_seconds").get("")
    if wait:
        L.append(f"           rate-limit wait p50 {fmt_s(wait.p50)} p99 {fmt_s(wait.p99)}")
    br = cur.get("pagerstream_pagerduty_breaker_open")
    L.append("BREAKERS   " + ("  ".join(f"…{lb.get('routing_key_hint', '?')} {BREAKER.get(int(v), v)}"
                                        for lb, v in sorted(br, key=lambda x: x[0].get('routing_key_hint', '')))
                              or "no routing key called yet"))

    # notifications
    if cur.has("pagerstream_notify_attempts_total") or cur.has("pagerstream_notify_breaker_state"):
        na = rates(cur, prev, "pagerstream_notify_attempts_total", "outcome")
        nt = cur.by("pagerstream_notify_attempts_total", "outcome")
        L.append("NOTIFY     " + (", ".join(f"{k} {v:.1f}/s (total {nt.get(k, 0):.0f})" for k, v in sorted(na.items()))
                                  or "no attempts yet"))
        nb = cur.get("pagerstream_notify_breaker_state")
        if nb:
            L.append("           breakers " + "  ".join(f"{lb.get('destination', '?')} {BREAKER.get(int(v), v)}"
                                                     for lb, v in nb))

    # models
    mq = quantiles(cur, prev, "pagerstream_model_latency_seconds", "model")
    if mq:
        L.append("")
        L.append(f"{'MODEL':<22}{'calls/s':>10}{'p50':>12}{'p99':>12}  window")
        mr = {}
        if prev is not None:
            now_c = cur.by("pagerstream_model_latency_seconds_count", "model")
            old_c = prev.by("pagerstream_model_latency_seconds_count", "model")
            mr = {k: max(0.0, v - old_c.get(k, 0.0)) / max(dt, 1e-9) for k, v in now_c.items()}
        for model, q in sorted(mq.items()):
            L.append(f"{model:<22}{mr.get(model, 0.0):>10.1f}{fmt_s(q.p50):>12}{fmt_s(q.p99):>12}  "
                     f"{'interval' if q.window else '(since start)'}")
    now = cur.at
    ck = cur.get("pagerstream_model_checkpoint_timestamp_seconds")
    if ck:
        L.append("checkpoints " + ", ".join(
            f"{lb.get('model')} {'none' if v <= 0 else f'{(now - v) / 60:.0f} min old'}" for lb, v in ck))
    return "\n".join(L)


def scrape(url: str, *, timeout: float = 5.0, verify: bool | str = True) -> Snapshot:
    import httpx

    r = httpx.get(url.rstrip("/") + "/metrics", timeout=timeout, verify=verify)
    r.raise_for_status()
    return Snapshot.parse(r.text)


def run(url: str, interval: float, once: bool, *, out=None, verify: bool | str = True,
        frames: int | None = None) -> int:
    """Print frames until interrupted (or one with `once`). Returns the exit code."""
    import sys

    out = out or sys.stdout
    try:
        prev = scrape(url, verify=verify)
    except Exception as e:  # noqa: BLE001
        print(f"pagerstream perf: cannot read {url}/metrics: {type(e).__name__}: {e}", file=out)
        return 1
    n = 0
    try:
        while True:
            if interval > 0:
                time.sleep(interval)
            try:
                cur = scrape(url, verify=verify)
            except Exception as e:  # noqa: BLE001
                if once:
                    print(f"pagerstream perf: cannot read {url}/metrics: {type(e).__name__}: {e}", file=out)
                    return 1
                print(f"{CLEAR}pagerstream perf: {url}/metrics unreachable ({type(e).__name__}); retrying", file=out)
                continue
            frame = render_frame(cur, prev if interval > 0 else None, url=url)
            print(frame if once else CLEAR + frame, file=out, flush=True)
            n += 1
            if once or (frames is not None and n >= frames):
                return 0
            prev = cur
    except KeyboardInterrupt:
        return 0


def iter_names(snap: Snapshot) -> Iterable[str]:
    return sorted(snap.samples)
