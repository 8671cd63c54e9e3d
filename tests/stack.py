"""Reachability checks for the local Kafka + Redis stack, and a way to bring it up.

Plain functions (no pytest import) so fixtures, conftests and scripts can all use them.
The stack itself is managed by scripts/stack.sh.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
STACK_SH = ROOT / "scripts" / "stack.sh"
KAFKA_LOG = ROOT / ".stack" / "kafka" / "logs" / "server.log"

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def kafka_bootstrap() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP)


def redis_url() -> str:
    return os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)


def _run(factory: Callable[[], Awaitable[Any]]) -> Any:
    """asyncio.run, or the same on a worker thread when a loop is already running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


@contextlib.contextmanager
def _quiet(logger_name: str):
    # aiokafka logs every refused connection at ERROR; a probe expects those.
    logger = logging.getLogger(logger_name)
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


def kafka_ready(bootstrap: str, timeout: float) -> bool:
    """True once a metadata request to `bootstrap` lists at least one broker, within `timeout` s."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def probe(budget: float) -> bool:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=int(max(1.0, min(budget, 5.0)) * 1000)
        )
        try:
            async with asyncio.timeout(budget):
                await admin.start()
                meta = await admin.describe_cluster()
            return bool(meta.get("brokers"))
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    deadline = time.monotonic() + timeout
    with _quiet("aiokafka"):
        while (budget := deadline - time.monotonic()) > 0:
            if _run(lambda: probe(budget)):
                return True
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    return False


def redis_ready(url: str, timeout: float) -> bool:
    """True once Redis at `url` answers PING, within `timeout` s."""
    import redis

    deadline = time.monotonic() + timeout
    while True:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            if client.ping():
                return True
        except redis.RedisError:
            pass
        finally:
            client.close()
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def _stack_env(bootstrap: str, url: str) -> dict[str, str]:
    """Pass ports/password implied by the URLs to stack.sh, unless already set explicitly."""
    env = dict(os.environ)
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if host.strip("[]") in _LOCAL_HOSTS and port.isdigit():
        env.setdefault("KAFKA_PORT", port)
    parsed = urlparse(url)
    if parsed.hostname in _LOCAL_HOSTS:
        if parsed.port:
            env.setdefault("REDIS_PORT", str(parsed.port))
        if parsed.password:
            env.setdefault("REDIS_PASSWORD", parsed.password)
    return env


def _kafka_log_tail(lines: int = 40) -> str:
    # server.log, or the newest server.log.failed-N that a retrying start left behind.
    logs = sorted(KAFKA_LOG.parent.glob("server.log*"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return f"(no Kafka log in {KAFKA_LOG.parent})"
    text = logs[-1].read_text(errors="replace")
    return f"[{logs[-1].name}]\n" + "\n".join(text.splitlines()[-lines:])


def ensure_stack() -> None:
    """Make sure Kafka and Redis answer; run `scripts/stack.sh start` if either does not."""
    bootstrap, url = kafka_bootstrap(), redis_url()
    if kafka_ready(bootstrap, 3) and redis_ready(url, 2):
        return

    lock_path = ROOT / ".stack" / "ensure.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    # One starter at a time (e.g. pytest-xdist workers); the others wait, then re-check.
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if kafka_ready(bootstrap, 2) and redis_ready(url, 1):
            return
        rc = None
        try:
            proc = subprocess.run(
                ["bash", str(STACK_SH), "start"],
                env=_stack_env(bootstrap, url),
                capture_output=True,
                text=True,
                timeout=600,
            )
            rc = proc.returncode
            output = (proc.stdout + proc.stderr).strip()
        except subprocess.TimeoutExpired as exc:
            output = f"scripts/stack.sh start timed out after {exc.timeout} s"

    # stack.sh waits for readiness itself; after a clean exit allow some slack, after a failure just look.
    kafka_ok = kafka_ready(bootstrap, 30 if rc == 0 else 2)
    redis_ok = redis_ready(url, 10 if rc == 0 else 1)
    if kafka_ok and redis_ok:
        return
    shown_url = url.replace(f":{urlparse(url).password}@", ":***@") if urlparse(url).password else url
    down = [name for name, ok in ((f"Kafka at {bootstrap}", kafka_ok), (f"Redis at {shown_url}", redis_ok)) if not ok]
    raise RuntimeError(
        f"stack not ready: {', '.join(down)}\n"
        f"--- scripts/stack.sh start (exit {rc}) ---\n{output}\n"
        f"--- tail of the Kafka log in {KAFKA_LOG.parent} ---\n{_kafka_log_tail()}"
    )
