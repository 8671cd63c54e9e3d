"""The Helm chart (deploy/helm/pagerstream) and the systemd unit (deploy/systemd) against the code.

What is checked, and what is not:
* Helm is not installed here, so the templates are rendered by `render()` below: a small renderer for the
  subset of Helm's template language the chart uses (`.Values/.Release/.Chart` lookups, `if`/`else`/`end`,
  `define`/`include`, and the functions quote, toYaml, nindent, indent, sha256sum, trim markers). A
  template that uses anything else makes the test fail instead of being skipped, so the chart stays within
  what is verified. It is not Helm: sprig functions, `range`, `with`, `tpl`, `lookup` and Helm's exact
  whitespace rules for constructs outside the subset are not covered.
* The rendered documents must parse as YAML and carry the keys Kubernetes requires for their kind (not a
  schema validation against the Kubernetes OpenAPI: field names are checked where the test reads them).
* Cross-checks with the code: probe paths are routes streams/app.py registers; the probe/Service port is
  the port the worker is told to listen on, on a non-loopback address; every env var name is one that
  pagerstream/config.py or pagerstream/pagerduty/rest.py reads; secrets come from secretKeyRef, never
  literals; the catalog in values.yaml passes pagerstream's own catalog validation; the data volume is
  PAGERSTREAM_DATADIR.
* systemd: the unit is parsed (sections, repeated keys) and, when `systemd-analyze` exists, verified by
  it with only the "executable not installed here" complaint allowed.
"""

from __future__ import annotations

import ast
import hashlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "pagerstream"
UNIT = ROOT / "deploy" / "systemd" / "pagerstream-worker@.service"
SECRET_VARS = {"ENCRYPTION_KEY", "WEBHOOK_SECRET", "JWT_SECRET", "PAGERDUTY_ROUTING_KEY", "REDIS_PASSWORD",
               "PAGERDUTY_API_KEY", "PAGERDUTY_USER_TOKEN", "PAGERDUTY_WEBHOOK_SECRETS", "KAFKA_SASL_PASSWORD",
               "KAFKA_SSL_KEY_PASSWORD"}
# TLS and SASL switched on (docs/security.md, "TLS and SASL"): what a Confluent-Cloud-like or mTLS install sets.
TLS_VALUES = {"kafka.securityProtocol": "SASL_SSL", "kafka.saslMechanism": "PLAIN", "kafka.saslUsername": "APIKEY",
              "redis.url": "rediss://redis-master:6380/0", "tls.existingSecret": "pagerstream-tls",
              "tls.kafkaCaFile": "kafka-ca.pem", "tls.kafkaCertFile": "client.pem", "tls.kafkaKeyFile": "client.key",
              "tls.redisCaFile": "redis-ca.pem"}


# --- a renderer for the chart's subset of Helm templates ---------------------------------------------------
class Unsupported(Exception):
    pass


_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)


def _tokens(src: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(src):
        text = src[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        out.append(("text", text))
        out.append(("action", m.group(2)))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = src[pos:]
    out.append(("text", text.lstrip() if trim_next else text))
    return out


def _parse(tokens: list[tuple[str, str]], i: int = 0, stop: tuple[str, ...] = ()) -> tuple[list[Any], int, str]:
    nodes: list[Any] = []
    while i < len(tokens):
        kind, val = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", val))
            continue
        if val.startswith("/*"):
            continue
        word = val.split()[0] if val.split() else ""
        if word in stop:
            return nodes, i, val
        if word == "if":
            body, i, end = _parse(tokens, i, ("else", "end"))
            other: list[Any] = []
            if end.startswith("else"):
                other, i, _ = _parse(tokens, i, ("end",))
            nodes.append(("if", val[2:].strip(), body, other))
        elif word == "define":
            name = re.fullmatch(r'define\s+"([^"]+)"', val)
            if not name:
                raise Unsupported(val)
            body, i, _ = _parse(tokens, i, ("end",))
            nodes.append(("define", name.group(1), body))
        elif word in ("range", "with", "template", "tpl", "else", "end"):
            raise Unsupported(f"{{{{ {val} }}}}")
        else:
            nodes.append(("expr", val))
    if stop:
        raise Unsupported(f"missing {stop}")
    return nodes, i, ""


class Renderer:
    def __init__(self, values: dict[str, Any], chart: dict[str, Any], release: str = "ps") -> None:
        self.ctx = {"Values": values, "Release": {"Name": release, "Namespace": "default", "Service": "Helm"},
                    "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]}}
        self.defines: dict[str, list[Any]] = {}

    def lookup(self, path: str) -> Any:
        if path == ".":
            return self.ctx
        cur: Any = self.ctx
        for part in path.lstrip(".").split("."):
            if not isinstance(cur, dict) or part not in cur:
                raise KeyError(f"{path}: no {part!r}")
            cur = cur[part]
        return cur

    def term(self, t: str) -> Any:
        if t.startswith('"') and t.endswith('"'):
            return t[1:-1]
        if re.fullmatch(r"-?\d+", t):
            return int(t)
        if t.startswith("."):
            return self.lookup(t)
        raise Unsupported(t)

    @staticmethod
    def to_yaml(v: Any) -> str:
        return yaml.safe_dump(v, default_flow_style=False, sort_keys=False).rstrip("\n")

    def call(self, fn: str, args: list[str], piped: Any = None, has_piped: bool = False) -> Any:
        vals = [self.term(a) for a in args] + ([piped] if has_piped else [])
        if fn == "quote":
            return '"' + str(vals[0]).replace('"', '\\"') + '"'
        if fn == "toYaml":
            return self.to_yaml(vals[0])
        if fn in ("nindent", "indent"):
            n, s = vals
            pad = " " * n
            body = "\n".join(pad + line if line else line for line in str(s).split("\n"))
            return ("\n" if fn == "nindent" else "") + body
        if fn == "sha256sum":
            return hashlib.sha256(str(vals[0]).encode()).hexdigest()
        if fn == "include":
            name, _dot = vals[0], vals[1]
            return self.render_nodes(self.defines[name])
        raise Unsupported(fn)

    def expr(self, e: str) -> Any:
        stages = [s.strip() for s in e.split("|")]
        val: Any = None
        for n, st in enumerate(stages):
            parts = re.findall(r'"[^"]*"|\S+', st)
            if n == 0 and len(parts) == 1 and (parts[0].startswith(".") or parts[0].startswith('"')):
                val = self.term(parts[0])
            else:
                val = self.call(parts[0], parts[1:], val, has_piped=n > 0)
        return val

    def render_nodes(self, nodes: list[Any]) -> str:
        out = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "expr":
                v = self.expr(node[1])
                out.append("" if v is None else (str(v).lower() if isinstance(v, bool) else str(v)))
            elif node[0] == "if":
                out.append(self.render_nodes(node[2] if self.expr(node[1]) else node[3]))
            elif node[0] == "define":
                self.defines[node[1]] = node[2]
        return "".join(out)

    def render(self, src: str) -> str:
        nodes, _, _ = _parse(_tokens(src))
        return self.render_nodes(nodes)


def render_chart(overrides: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """template file name -> its YAML documents (non-empty ones)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for dotted, v in (overrides or {}).items():
        cur = values
        *head, last = dotted.split(".")
        for h in head:
            cur = cur[h]
        cur[last] = v
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    r = Renderer(values, chart)
    for helper in sorted((CHART / "templates").glob("_*.tpl")):
        r.render(helper.read_text())
    out = {}
    for t in sorted((CHART / "templates").glob("*.yaml")):
        text = r.render(t.read_text())
        out[t.name] = [d for d in yaml.safe_load_all(text) if d]
    return out


def _docs(rendered: dict[str, list[dict]], kind: str) -> list[dict]:
    return [d for docs in rendered.values() for d in docs if d.get("kind") == kind]


# --- what the code reads -------------------------------------------------------------------------------------
def config_env_names() -> set[str]:
    """Upper-case string constants in pagerstream/config.py and pagerstream/pagerduty/rest.py: the variable
    names those modules read (plus a few message words, which no chart would use as a name)."""
    names: set[str] = set()
    for f in (ROOT / "pagerstream" / "config.py", ROOT / "pagerstream" / "pagerduty" / "rest.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    re.fullmatch(r"[A-Z][A-Z0-9_]{3,}", node.value):
                names.add(node.value)
    return names


def app_routes() -> set[str]:
    src = (ROOT / "streams" / "app.py").read_text()
    return set(re.findall(r'router\.add_get\("([^"]+)"', src))


# --- tests -----------------------------------------------------------------------------------------------
def test_renderer_refuses_what_it_does_not_understand():
    r = Renderer({"xs": [1]}, {"name": "n", "version": "1", "appVersion": "1"})
    with pytest.raises(Unsupported):
        r.render("{{- range .Values.xs }}x{{- end }}")
    with pytest.raises(Unsupported):
        r.render("{{ .Values.xs | b64enc }}")
    assert r.render("a:\n  {{- toYaml .Values | nindent 2 }}") == "a:\n  xs:\n  - 1"


def test_chart_metadata_matches_the_package():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "pagerstream" and chart["type"] == "application"
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    assert chart["appVersion"] == version


def test_templates_render_to_the_expected_objects():
    rendered = render_chart()
    kinds = sorted(d["kind"] for docs in rendered.values() for d in docs)
    assert kinds == ["ConfigMap", "Job", "PodDisruptionBudget", "Service", "Service", "StatefulSet"]
    for docs in rendered.values():
        for d in docs:
            assert d["apiVersion"] and d["metadata"]["name"].startswith("ps"), d
            assert d["metadata"]["labels"]["app.kubernetes.io/instance"] == "ps"
    without = render_chart({"pdb.enabled": False, "deployJob.enabled": False})
    assert not _docs(without, "PodDisruptionBudget") and not _docs(without, "Job")


def test_statefulset_probes_ports_and_volumes_fit_the_worker():
    rendered = render_chart()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    sts = _docs(rendered, "StatefulSet")[0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    routes = app_routes()
    assert {"/healthz", "/readyz", "/metrics"} <= routes
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for p in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[p]["httpGet"]["port"] == "http"
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    args = c["args"]
    assert args[0] == "worker"
    assert int(args[args.index("--web-port") + 1]) == port == values["webPort"]
    assert args[args.index("--web-host") + 1] not in ("127.0.0.1", "localhost")  # probes come from the kubelet
    assert args[args.index("--log-format") + 1] in ("json", "text")
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    # selectors: Services and PDB select exactly the worker pods
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    services = {s["metadata"]["name"]: s for s in _docs(rendered, "Service")}
    assert services[spec["serviceName"]]["spec"]["clusterIP"] == "None"
    for s in services.values():
        assert s["spec"]["selector"].items() <= pod_labels.items()
        assert s["spec"]["ports"][0]["targetPort"] == "http"
    pdb = _docs(rendered, "PodDisruptionBudget")[0]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # the data volume is the RocksDB directory; the catalog file is the ConfigMap's key
    env = {e["name"]: e for e in c["env"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert env["PAGERSTREAM_DATADIR"]["value"] == mounts["data"]
    cm = _docs(rendered, "ConfigMap")[0]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["catalog"]["configMap"]["name"] == cm["metadata"]["name"]
    key = next(iter(cm["data"]))
    assert env["PAGERSTREAM_CATALOG"]["value"] == f"{mounts['catalog']}/{key}"


@pytest.mark.parametrize("overrides", [{}, TLS_VALUES], ids=["defaults", "tls-sasl"])
def test_env_names_are_read_by_the_config_and_secrets_come_from_the_secret(overrides):
    known = config_env_names()
    rendered = render_chart(overrides)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    sts = _docs(rendered, "StatefulSet")[0]
    job = _docs(rendered, "Job")[0]
    for container in (sts["spec"]["template"]["spec"]["containers"][0], job["spec"]["template"]["spec"]["containers"][0]):
        names = [e["name"] for e in container["env"]]
        assert len(names) == len(set(names)), "an env var is set twice"
        unknown = sorted(set(names) - known)
        assert not unknown, f"env vars nothing reads: {unknown}"
        for e in container["env"]:
            if e["name"] in SECRET_VARS:
                ref = e["valueFrom"]["secretKeyRef"]
                assert "value" not in e and ref["name"] == values["secrets"]["existingSecret"], e
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PAGERSTREAM_ALLOW_PRIVATE_PD_URL"] == "false"
        assert env["PAGERDUTY_EVENTS_URL"].startswith("https://")


def test_tls_and_sasl_settings_reach_the_worker_and_the_deploy_job(tmp_path):
    from pagerstream.config import load_settings

    rendered = render_chart(TLS_VALUES)
    sts, job = _docs(rendered, "StatefulSet")[0], _docs(rendered, "Job")[0]
    for pod in (sts["spec"]["template"]["spec"], job["spec"]["template"]["spec"]):
        c = pod["containers"][0]
        env = {e["name"]: e for e in c["env"]}
        mount = {m["name"]: m for m in c["volumeMounts"]}["tls"]
        vol = {v["name"]: v for v in pod["volumes"]}["tls"]
        assert vol["secret"]["secretName"] == "pagerstream-tls" and mount["readOnly"]
        assert pod["securityContext"]["fsGroup"] == 10001  # the files are group-readable (0440) only
        files = {"KAFKA_SSL_CAFILE": "kafka-ca.pem", "KAFKA_SSL_CERTFILE": "client.pem",
                 "KAFKA_SSL_KEYFILE": "client.key", "REDIS_SSL_CA_CERTS": "redis-ca.pem"}
        for var, key in files.items():
            assert env[var]["value"] == f"{mount['mountPath']}/{key}", var
        assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "kafka-sasl-password"
        assert env["KAFKA_SSL_KEY_PASSWORD"]["valueFrom"]["secretKeyRef"]["optional"] is True
        # the plain values are ones the config accepts (the files are stand-ins here: only their paths are rendered)
        from tests.tls import make_pki

        pki = make_pki(tmp_path / "pki")
        plain = {k: e["value"] for k, e in env.items() if "value" in e and k.startswith(("KAFKA_", "REDIS_"))}
        plain.update(KAFKA_SSL_CAFILE=pki.ca, KAFKA_SSL_CERTFILE=pki.server_cert, KAFKA_SSL_KEYFILE=pki.server_key,
                     REDIS_SSL_CA_CERTS=pki.ca, KAFKA_SASL_PASSWORD="from-the-secret")
        s = load_settings(plain)
        assert (s.kafka_security_protocol, s.kafka_sasl_mechanism, s.redis_url) == (
            "SASL_SSL", "PLAIN", "rediss://redis-master:6380/0")
    # without tls.existingSecret nothing is mounted and no file variable is set
    c = _docs(render_chart(), "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "tls" not in {m["name"] for m in c["volumeMounts"]}
    assert not {"KAFKA_SSL_CAFILE", "KAFKA_SASL_PASSWORD", "REDIS_SSL_CA_CERTS"} & {e["name"] for e in c["env"]}


def test_values_catalog_passes_the_catalog_validation(tmp_path):
    from pagerstream.processors.catalog import load_catalog

    rendered = render_chart()
    cm = _docs(rendered, "ConfigMap")[0]
    f = tmp_path / "catalog.yaml"
    f.write_text(cm["data"]["catalog.yaml"])
    cat = load_catalog(f)
    assert [s.name for s in cat.services] == ["checkout"]


def test_deploy_job_runs_deploy_before_install_and_upgrade():
    job = _docs(render_chart(), "Job")[0]
    assert set(job["metadata"]["annotations"]["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][:2] == ["deploy", "--env"] and c["args"][2] in ("production", "staging", "dev")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


# --- systemd ---------------------------------------------------------------------------------------------
def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    cur = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            cur = sections.setdefault(line[1:-1], [])
            continue
        assert cur is not None and "=" in line, f"not a unit file line: {raw!r}"
        k, v = line.split("=", 1)
        cur.append((k.strip(), v.strip()))
    return sections


def test_systemd_unit_runs_the_worker_hardened():
    u = parse_unit(UNIT.read_text())
    svc = dict(u["Service"])  # last value wins, as systemd does for these keys
    assert "WantedBy" in dict(u["Install"]) and "network-online.target" in dict(u["Unit"])["After"]
    exec_start = svc["ExecStart"].split()
    assert exec_start[1:2] == ["worker"] and exec_start[exec_start.index("--web-port") + 1] == "%i"
    assert exec_start[exec_start.index("--log-format") + 1] == "json"
    for k, v in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                 "PrivateDevices": "yes", "CapabilityBoundingSet": "", "RestrictSUIDSGID": "yes",
                 "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
                 "LockPersonality": "yes", "SystemCallArchitectures": "native", "KillSignal": "SIGTERM",
                 "Restart": "on-failure"}.items():
        assert svc.get(k) == v, k
    assert int(svc["TimeoutStopSec"]) >= 30 and svc["User"] != "root"
    envs = [v for k, v in u["Service"] if k == "Environment"]
    names = {e.split("=", 1)[0] for e in envs}
    assert names <= config_env_names(), names - config_env_names()
    datadir = dict(e.split("=", 1) for e in envs)["PAGERSTREAM_DATADIR"]
    assert datadir == "/var/lib/" + svc["StateDirectory"]  # ProtectSystem=strict: only the state dir is writable
    if shutil.which("systemd-analyze"):
        p = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60,
                           check=False)
        complaints = [line for line in (p.stdout + p.stderr).splitlines()
                      if line.strip() and "is not executable: No such file or directory" not in line]
        assert not complaints, complaints
