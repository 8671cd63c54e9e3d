"""Scenario 5: one notification destination accepts connections and never answers. The other
destination still receives every incident change (opened and resolved for each alert)."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from pagerstream.notify.secrets import SecretStore
from tests.faults.conftest import OPEN_INGRESS, Timer, pd_body, routing_key, wait_for

SIGNING = "faults-hook-signing-" + "s" * 24
N_ALERTS = 6


class HungReceiver(threading.Thread):
    """Accepts TCP connections and holds them open without reading or answering."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
            except OSError:
                continue

    def close(self) -> None:
        self.done.set()
        self.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


class GoodReceiver:
    """A webhook receiver that answers 200 at once and records what it got."""

    def __init__(self) -> None:
        got: list[dict] = []
        self.got = got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                got.append({"at": time.time(), "id": self.headers.get("X-Webhook-Id"), "body": json.loads(raw)})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def hung_destination(workers: Any, tmp_path: Path) -> dict[str, Any]:
    """The scenario (also run by scripts/soak.py). Returns its figures."""
    timer = Timer()
    hung, good = HungReceiver(), GoodReceiver()
    hung.start()
    try:
        env = workers.env({**OPEN_INGRESS, "OUTBOUND_URL_ALLOWLIST": "127.0.0.1"})
        secrets = tmp_path / "notify-secrets.enc.json"
        SecretStore(secrets, env["ENCRYPTION_KEY"]).put("hook", {"signing_secret": SIGNING})
        cfg = {"destinations": [
            {"name": "hung", "channel": "webhook", "secret_ref": "hook",
             "config": {"url": f"http://127.0.0.1:{hung.port}/hook"}},
            {"name": "good", "channel": "webhook", "secret_ref": "hook",
             "config": {"url": f"http://127.0.0.1:{good.port}/hook"}}],
            "default": ["hung", "good"]}
        (tmp_path / "notify.yaml").write_text(json.dumps(cfg))
        env.update({"PAGERSTREAM_NOTIFY_CONFIG": str(tmp_path / "notify.yaml"),
                    "PAGERSTREAM_NOTIFY_SECRETS": str(secrets)})
        w = workers.start(env, name="notify-hung")
        timer.mark("worker ready")
        rk = routing_key("HUNG")
        run = uuid.uuid4().hex[:6]
        keys = [f"hung-{run}-{i}" for i in range(N_ALERTS)]
        sent_at = time.time()
        with httpx.Client(timeout=30) as c:
            for i, k in enumerate(keys):
                assert c.post(w.url + "/v2/enqueue", json=pd_body(rk, "trigger", k, i)).status_code == 202
            for i, k in enumerate(keys):
                assert c.post(w.url + "/v2/enqueue", json=pd_body(rk, "resolve", k, i)).status_code == 202
        timer.mark(f"{2 * N_ALERTS} alerts accepted")

        def seen() -> dict[str, set[str]]:
            """dedup_key -> changes that reached the good destination, including the earlier changes a
            message carries folded in (data.pagerstream.bundled) when they came in a burst."""
            out: dict[str, set[str]] = {}
            for g in good.got:
                ev = g["body"]["event"]
                key = ev["data"].get("incident_key")
                if key in keys:
                    out.setdefault(key, set()).add(ev["event_type"])
                    out[key].update(b["event_type"] for b in ev["data"]["pagerstream"].get("bundled") or ())
            return out

        want = {k: {"incident.triggered", "incident.resolved"} for k in keys}
        try:
            wait_for(lambda: all(seen().get(k, set()) >= v for k, v in want.items()), timeout=240, interval=1,
                     what="every change at the destination that answers")
        except AssertionError:
            raise AssertionError(f"good destination got {seen()} of {want}\n{w.proc.log_tail(20)}") from None
        timer.mark("all at the good destination")
        assert hung.conns, "the hung destination was never called"
        assert w.proc.alive()
        return {"messages_at_good": len(good.got), "last_after_s": round(max(g["at"] for g in good.got) - sent_at, 1),
                "connections_held_by_hung": len(hung.conns), "timeline": str(timer)}
    finally:
        hung.close()
        good.close()


def test_a_hung_destination_does_not_stop_the_others(workers, tmp_path):
    print(f"\n[faults] hung destination: {hung_destination(workers, tmp_path)}")
