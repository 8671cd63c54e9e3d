"""Run pagerstream's processes locally (worker, PagerDuty sandbox, Alertmanager) as real
subprocesses on loopback. Used by the demo and by the integration tests and benchmarks.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, ok=(200,), verify: bool | str = True) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0, verify=verify).status_code in ok:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL, 5)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    f = open(log_path, "ab")
    p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                         start_new_session=True)
    return Proc(name, p, log_path)


@dataclass
class Sandbox:
    proc: Proc
    url: str

    def state(self, what: str = "requests", **params: str) -> object:
        j = httpx.get(f"{self.url}/sandbox/{what}", params=params, timeout=5).json()
        return j["requests"] if what == "requests" and isinstance(j, dict) else j

    def faults(self, body: dict) -> None:
        httpx.post(f"{self.url}/sandbox/faults", json=body, timeout=5).raise_for_status()


def start_sandbox(log_dir: Path, port: int | None = None) -> Sandbox:
    port = port or free_port()
    proc = start("pd-sandbox", [sys.executable, "-m", "pagerstream.cli", "pd-sandbox", "--port", str(port)],
                 dict(os.environ), log_dir)
    url = f"http://127.0.0.1:{port}"
    if not wait_http(url + "/healthz", 20):
        proc.stop()
        raise RuntimeError("pd-sandbox did not start:\n" + proc.log_tail())
    return Sandbox(proc, url)


@dataclass
class Worker:
    proc: Proc
    url: str
    env: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5).text


_DEV_KEY: str | None = None


def dev_encryption_key() -> str:
    """A Fernet key for local runs and tests, made once per process; never for production."""
    global _DEV_KEY
    if _DEV_KEY is None:
        from cryptography.fernet import Fernet

        _DEV_KEY = Fernet.generate_key().decode()
    return _DEV_KEY


def worker_env(*, app_id: str, prefix: str, datadir: Path, events_url: str | None,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PAGERSTREAM_APP_ID": app_id,
        "PAGERSTREAM_TOPIC_PREFIX": prefix,
        "PAGERSTREAM_DATADIR": str(datadir),
    })
    if not env.get("ENCRYPTION_KEY"):  # local runs: one throwaway key per process (model checkpoints)
        env["ENCRYPTION_KEY"] = dev_encryption_key()
    if "PAGERSTREAM_INGRESS_KEYS" not in env and "PAGERSTREAM_INGRESS_KEYS" not in (extra or {}):
        # the demo and the benchmarks on loopback: an explicit, logged opt-out of ingress keys (a real
        # deployment without keys refuses to start; see docs/security.md)
        env.setdefault("PAGERSTREAM_INGRESS_AUTH", "open")
        env.setdefault("PAGERSTREAM_INGRESS_RATE", "100000")
        env.setdefault("PAGERSTREAM_INGRESS_BURST", "100000")
    if events_url:
        env["PAGERDUTY_EVENTS_URL"] = events_url
        env["PAGERSTREAM_ALLOW_PRIVATE_PD_URL"] = "true"
    env.update(extra or {})
    return env


def start_worker(env: dict[str, str], log_dir: Path, *, port: int | None = None, catalog: str | None = None,
                 session_timeout: float = 10.0, name: str = "worker", ready_timeout: float = 90.0,
                 tls: tuple[str, str] | None = None, extra_args: list[str] | None = None) -> Worker:
    port = port or free_port()
    args = [sys.executable, "-m", "pagerstream.cli", "worker", "--web-port", str(port),
            "--session-timeout", str(session_timeout),
            # PAGERSTREAM_WORKER_LOGLEVEL=info keeps the workers' rebalance/seek story when chasing a failure
            "--loglevel", os.environ.get("PAGERSTREAM_WORKER_LOGLEVEL", "warning")]
    if tls:
        args += ["--tls-cert", tls[0], "--tls-key", tls[1]]
    args += extra_args or []
    if catalog:
        args += ["--catalog", catalog]
    proc = start(name, args, env, log_dir)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{name} exited:\n" + proc.log_tail())
        if wait_http(url + "/readyz", 1.0, verify=tls[0] if tls else True):
            return Worker(proc, url, env)
    proc.stop()
    raise RuntimeError(f"{name} not ready after {ready_timeout}s:\n" + proc.log_tail())


def alertmanager_binary() -> str | None:
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def start_alertmanager(ingress_url: str, routing_key: str, log_dir: Path) -> tuple[Proc, str]:
    """A real Alertmanager whose receiver sends both its webhook and its PagerDuty notification to
    pagerstream's ingress."""
    binary = alertmanager_binary()
    if not binary:
        raise RuntimeError("prometheus-alertmanager is not installed (scripts/stack.sh install)")
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="am-", dir=str(log_dir)))
    (work / "alertmanager.yml").write_text(f"""
route:
  receiver: pagerstream
  group_by: [alertname, service]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1h
receivers:
  - name: pagerstream
    webhook_configs:
      - url: {ingress_url}/ingest/alertmanager?routing_key={routing_key}
        send_resolved: true
    pagerduty_configs:
      - routing_key: {routing_key}
        url: {ingress_url}/v2/enqueue
        send_resolved: true
""")
    proc = start("alertmanager", [binary, f"--config.file={work / 'alertmanager.yml'}",
                                  f"--storage.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                  "--cluster.listen-address=", "--log.level=info"], dict(os.environ), log_dir)
    url = f"http://127.0.0.1:{port}"
    if not wait_http(url + "/-/ready", 30):
        proc.stop()
        raise RuntimeError("alertmanager did not start:\n" + proc.log_tail())
    return proc, url
