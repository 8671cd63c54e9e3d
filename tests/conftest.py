"""Shared fixtures. Integration fixtures start real processes: Kafka and Redis (scripts/stack.sh),
the PagerDuty sandbox, pagerstream workers and Alertmanager, all on loopback."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from pagerstream.localrun import Sandbox, Worker, start_sandbox, start_worker, worker_env

# The fault-injection suite (tests/faults, docs/faults.md) is part of every run; PAGERSTREAM_FAULTS=0
# leaves it out (e.g. for a quick local run: scripts/dev test tests/unit needs nothing of it anyway).
collect_ignore_glob = ["faults/*"] if os.environ.get("PAGERSTREAM_FAULTS") == "0" else []

ROUTING_KEY = "TESTROUTINGKEY00000000000000000A"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Workers refuse to start without ingress keys (docs/security.md): every test worker gets a key file with
# the routing keys the suites send as PagerDuty integration keys, plus one bearer key for webhooks, and
# a JWT secret for the operator API (api_headers()).
JWT_SECRET = "test-jwt-secret-0123456789abcdef0123456789"
INGRESS_KEY = "TESTINGRESSBEARERKEY000000000001"
TEST_ROUTING_KEYS = {"default": ROUTING_KEY, "alertmanager": "ALERTMANAGERROUTINGKEY0000000001",
                     "crash": "CRASHTESTROUTINGKEY0000000000001", "storm": "STORMTESTROUTINGKEY0000000000001",
                     "restart": "RESTARTTESTROUTINGKEY00000000001", "outage": "OUTAGETESTROUTINGKEY000000000001",
                     "bearer": INGRESS_KEY}
_KEY_FILE: list[str] = []


def ingress_key_file() -> str:
    """A key file (hashes only) with TEST_ROUTING_KEYS, written once per test session."""
    if not _KEY_FILE:
        from pagerstream.auth import add_key_to_file

        path = Path(tempfile.mkdtemp(prefix="ps-keys-")) / "ingress-keys"
        for name, key in TEST_ROUTING_KEYS.items():
            add_key_to_file(str(path), name, key)
        _KEY_FILE.append(str(path))
    return _KEY_FILE[0]


def api_headers(role: str = "admin", sub: str = "pytest") -> dict[str, str]:
    """Authorization for the operator API of a test worker."""
    from pagerstream.auth import issue_token

    return {"Authorization": "Bearer " + issue_token(JWT_SECRET, sub=sub, role=role, ttl_s=3600)}


@pytest.fixture(scope="session")
def stack() -> None:
    from tests.stack import ensure_stack

    ensure_stack()


@pytest.fixture(scope="session")
def logdir() -> Path:
    d = Path(os.environ.get("PAGERSTREAM_TEST_LOGS") or tempfile.mkdtemp(prefix="pagerstream-test-"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def sandbox(stack, logdir) -> Sandbox:
    sb = start_sandbox(logdir)
    yield sb
    sb.proc.stop()


class WorkerFactory:
    """Start isolated workers: each call gets its own topics (prefix), app id and data dir unless
    asked to reuse those of an earlier one (restart)."""

    def __init__(self, logdir: Path, sandbox: Sandbox) -> None:
        self.logdir = logdir
        self.sandbox = sandbox
        self.workers: list[Worker] = []
        self.dirs: list[Path] = []

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        run = uuid.uuid4().hex[:8]
        d = Path(tempfile.mkdtemp(prefix=f"ps-{run}-", dir=self.logdir))
        self.dirs.append(d)
        # The transient pause is switched on only by the tests about it: elsewhere a test that opens
        # and resolves one alert type quickly three times would see its fourth trigger held back.
        return worker_env(app_id=f"ps-test-{run}", prefix=f"t{run}.", datadir=d / "data",
                          events_url=self.sandbox.url, extra={"PAGERSTREAM_TRANSIENT_PAUSE": "false",
                                                              "PAGERSTREAM_INGRESS_KEYS": ingress_key_file(),
                                                              "JWT_SECRET": JWT_SECRET, **(extra or {})})

    def start(self, env: dict[str, str], **kw) -> Worker:
        w = start_worker(env, self.logdir, catalog=kw.pop("catalog", str(FIXTURES / "catalog.example.yaml")),
                         name=kw.pop("name", env["PAGERSTREAM_APP_ID"]), **kw)
        self.workers.append(w)
        return w

    def close(self) -> None:
        for w in self.workers:
            w.proc.stop()


@pytest.fixture
def workers(stack, logdir, sandbox):
    f = WorkerFactory(logdir, sandbox)
    yield f
    f.close()


@pytest.fixture(scope="session")
def shared_worker(stack, logdir, sandbox):
    """One worker for the tests that only send traffic (unique dedup keys keep them apart)."""
    f = WorkerFactory(logdir, sandbox)
    env = f.env({"PAGERSTREAM_PD_RATE": "200", "PAGERSTREAM_PD_BURST": "50"})
    w = f.start(env)
    yield w
    f.close()
