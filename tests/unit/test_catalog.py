"""The services catalog: the example file, every kind of error (file, path, reason), matching order."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pagerstream.processors.alert import Alert
from pagerstream.processors.catalog import EMPTY_CATALOG, Catalog, FieldPath, load_catalog, parse_catalog
from pagerstream.processors.errors import CatalogError, PagerstreamError
from pagerstream.processors.normalize import normalize

EXAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "catalog.example.yaml"
RK = "0123456789abcdef0123456789abcdef"
RK_PLATFORM = "fedcba9876543210fedcba9876543210"


def alert(**kw) -> Alert:
    base = {
        "id": "r:0",
        "raw_id": "r",
        "source": "alertmanager",
        "action": "trigger",
        "routing_key": "a" * 32,
        "dedup_key": "k",
        "summary": "s",
        "severity": "error",
        "origin": "host-1",
        "event_time": 1,
        "received_at": 1,
    }
    return Alert(**(base | kw))


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(EXAMPLE)


def test_example_loads(catalog):
    assert [s.name for s in catalog.services] == ["checkout", "search-api", "platform"]
    checkout, search, platform = catalog.services
    assert (checkout.team, checkout.tier, checkout.routing_key) == ("payments", 1, RK)
    assert checkout.runbook_url == "https://runbooks.example.com/checkout"
    assert (
        checkout.grouping.mode == "fields" and checkout.grouping.window_seconds == 300
    )  # merged over defaults
    assert [f.text for f in checkout.grouping.fields] == ["labels.alertname", "labels.cluster"]
    assert checkout.auto_resolve_seconds == 14400 and checkout.dedup_window_seconds == 0
    assert [p.text for p in checkout.redact] == ["custom_details.card_number"]
    assert (search.grouping.mode, search.grouping.window_seconds, search.dedup_window_seconds) == (
        "time_window",
        600,
        120,
    )
    assert search.routing_key is None and platform.tier == 0
    assert [p.text for p in catalog.redact] == ["labels.email", "custom_details.password"]
    assert list(catalog.sources) == ["uptimebot"] and catalog.sources["uptimebot"].items == "body.checks"
    assert catalog.version == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
    assert catalog.defaults.grouping.mode == "none"


@pytest.mark.parametrize(
    "kw, expected, matcher",
    [
        ({"labels": {"service": "checkout"}}, "checkout", 0),
        ({"origin": "checkout-7f9c-x2"}, "checkout", 1),  # `source` matcher = PagerDuty source = Alert.origin
        ({"origin": "checkout-"}, None, None),  # the regex must match the whole value
        ({"origin": "my-checkout-1"}, None, None),
        ({"labels": {"job": "search-api", "env": "production"}}, "search-api", 0),
        ({"labels": {"job": "search", "env": "production"}}, "search-api", 0),
        ({"labels": {"job": "search-api", "env": "staging"}}, None, None),  # all conditions must hold
        ({"labels": {"job": "search-apix", "env": "production"}}, None, None),
        ({"source": "pagerduty_events_v2", "component": "elasticsearch"}, "search-api", 1),
        ({"source": "alertmanager", "component": "elasticsearch"}, None, None),
        ({"labels": {"team": "platform"}}, "platform", 0),
        ({"routing_key": RK_PLATFORM}, "platform", 1),
        (
            {"labels": {"service": "checkout", "team": "sre"}},
            "checkout",
            0,
        ),  # first service in file order wins
        ({"labels": {"service": "Checkout"}}, None, None),  # exact values are case sensitive
    ],
)
def test_matching(catalog, kw, expected, matcher):
    found = catalog.find(alert(**kw))
    assert (found.spec.name if found else None) == expected
    assert (found.matcher_index if found else None) == matcher
    assert (catalog.match(alert(**kw)).name if expected else catalog.match(alert(**kw))) == expected


def test_example_source_mapping_normalizes(catalog):
    body = {
        "checks": [
            {"id": 7, "name": "login", "state": "down", "tier": 1, "host": "checkout-7f9c-x2", "url": "https://shop/login",
             "service": "checkout", "checked_at": "2026-01-15T10:00:00Z", "component": "web"},
            {"id": 8, "name": "search", "state": "up", "tier": 2, "host": "search-1", "url": "https://shop/search"},
        ]
    }  # fmt: skip
    a, b = normalize("generic:uptimebot", json.dumps(body).encode(), raw_id="r", received_at_ms=5,
                     attributes={}, default_routing_key="", mappings=catalog.sources)  # fmt: skip
    assert (a.dedup_key, a.summary, a.severity, a.origin, a.action) == (
        "uptimebot:7", "login is down (https://shop/login)", "critical", "checkout-7f9c-x2", "trigger")  # fmt: skip
    assert a.labels == {"service": "checkout", "check": "login"} and a.event_time == 1768471200000
    assert (b.action, b.severity, b.component, b.labels) == ("resolve", "warning", None, {"check": "search"})
    assert catalog.match(a).name == "checkout"


def test_empty_catalog_matches_nothing():
    assert EMPTY_CATALOG.match(alert(labels={"service": "checkout"})) is None
    assert EMPTY_CATALOG.services == () and EMPTY_CATALOG.redact == ()


def test_entries_round_trip(catalog):
    entries = json.loads(json.dumps(catalog.to_entries()))  # JSON-able
    assert [e["name"] for e in entries] == ["@catalog", "checkout", "search-api", "platform"]
    assert all(e["catalog_version"] == catalog.version for e in entries)
    assert entries[1]["spec"]["grouping"] == {"mode": "fields", "window_seconds": 300,
                                              "fields": ["labels.alertname", "labels.cluster"]}  # fmt: skip
    rebuilt = Catalog.from_entries(reversed(entries))  # order of arrival does not matter
    assert rebuilt.services == catalog.services
    assert rebuilt.redact == catalog.redact and rebuilt.sources == catalog.sources
    assert rebuilt.defaults == catalog.defaults and rebuilt.version == catalog.version
    assert rebuilt.match(alert(labels={"team": "sre"})).name == "platform"


def test_corrupt_entries_are_rejected(catalog):
    entries = catalog.to_entries()
    entries[1]["spec"]["routing_key"] = "short"
    with pytest.raises(CatalogError) as info:
        Catalog.from_entries(entries)
    assert info.value.file == "<entries>" and info.value.path == "services[0].routing_key"


# ---- errors: file, path, reason ------------------------------------------------------------------

SVC = "version: 1\nservices:\n  - name: a\n    matchers: [{labels: {x: y}}]\n"


def problems(text: str) -> dict[str, str]:
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, file="svc.yaml")
    err = info.value
    assert err.file == "svc.yaml" and (err.path, err.reason) == err.problems[0]
    assert str(err).splitlines()[0] == f"svc.yaml: {err.path}: {err.reason}"
    assert isinstance(err, PagerstreamError)
    return dict(err.problems)


@pytest.mark.parametrize(
    "text, path, reason",
    [
        ("", "(root)", "the catalog is empty (expected version: 1 and services: [...])"),
        ("- a\n", "(root)", "['a'] is not of type 'object'"),
        ("version: 2\nservices: []\n", "version", "1 was expected"),
        ("version: 1\n", "(root)", "'services' is a required property"),
        ("version: 1\nservices: []\nextra: 1\n", "(root)", "Additional properties are not allowed ('extra' was unexpected)"),
        ("version: 1\nservices: [\n", "line 3, column 1", "YAML syntax error: expected the node content, but found '<stream end>'"),
        ("version: 1\nservices: []\nservices: []\n", "line 3", "duplicate key 'services'"),
        (SVC.replace("name: a", "name: 'bad name'"), "services[0].name", "'bad name' does not match '^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$'"),
        (SVC + "    tier: tier-1\n", "services[0].tier", "'tier-1' is not of type 'integer'"),
        (SVC + "    tier: 5\n", "services[0].tier", "5 is greater than the maximum of 4"),
        (SVC + "    routing_key: abc\n", "services[0].routing_key", "expected a PagerDuty integration key: 32 letters or digits"),
        (SVC + "    runbook_url: ftp://runbooks\n", "services[0].runbook_url", "expected an http(s) URL, got 'ftp://runbooks'"),
        (SVC + "    runbook_url: https://\n", "services[0].runbook_url", "expected an http(s) URL, got 'https://'"),
        (SVC.replace("{x: y}", "{x: '^(open'}"), "services[0].matchers[0].labels.x",
         "invalid regular expression: missing ), unterminated subpattern at position 1"),
        (SVC.replace("{labels: {x: y}}", "{routing_key: nope}"), "services[0].matchers[0].routing_key",
         "expected a PagerDuty integration key: 32 letters or digits"),
        (SVC.replace("{labels: {x: y}}", "{}"), "services[0].matchers[0]", "{} should be non-empty"),
        (SVC.replace("{labels: {x: y}}", "{host: y}"), "services[0].matchers[0]",
         "Additional properties are not allowed ('host' was unexpected)"),
        (SVC.replace("{x: y}", "{x: 3}"), "services[0].matchers[0].labels.x", "3 is not of type 'string'"),
        (SVC + "    grouping: {mode: fields}\n", "services[0].grouping.fields", "grouping mode 'fields' needs at least one field"),
        (SVC + "    grouping: {mode: clusters}\n", "services[0].grouping.mode",
         "'clusters' is not one of ['none', 'time_window', 'fields', 'correlate']"),
        (SVC + "    grouping: {mode: fields, fields: [labels]}\n", "services[0].grouping.fields[0]",
         "unknown field path 'labels' (expected labels.<name> or one of source, component, group, class, input)"),
        (SVC + "    grouping: {mode: fields, fields: [custom_details.x]}\n", "services[0].grouping.fields[0]",
         ("unknown field path 'custom_details.x' (expected labels.<name> or one of source, component, group, "
          "class, input)")),
        (SVC + "    grouping: {mode: fields, fields: [severity]}\n", "services[0].grouping.fields[0]",
         "unknown field path 'severity' (expected labels.<name> or one of source, component, group, class, input)"),
        (SVC + "    redact: [severity]\n", "services[0].redact[0]",
         ("unknown field path 'severity' (expected labels.<name>, custom_details.<key>... or one of summary, source, "
         "component, group, class, client_url)")),
        (SVC + "redact: [custom_details..x]\n", "redact[0]", "malformed field path 'custom_details..x' (empty or padded segment)"),
        (SVC + "    auto_resolve_seconds: -1\n", "services[0].auto_resolve_seconds", "-1 is less than the minimum of 0"),
        (SVC + "sources: {m: {summary: s, severity: info, source: h}}\n", "sources.m.dedup_key", "required template is missing"),
        (SVC + "sources: {m: {dedup_key: '{{ x', summary: s, severity: info, source: h}}\n", "sources.m.dedup_key",
         "template syntax error: unexpected end of template, expected 'end of print statement'. (line 1)"),
        (SVC + "sources: {m: 3}\n", "sources.m", "3 is not of type 'object'"),
    ],
)  # fmt: skip
def test_each_kind_of_error(text, path, reason):
    assert problems(text) == {path: reason}


def test_grouping_fields_inherited_from_defaults_satisfy_mode_fields():
    text = SVC.replace("version: 1\n", "version: 1\ndefaults: {grouping: {fields: [labels.alertname]}}\n")
    spec = parse_catalog(text + "    grouping: {mode: fields}\n").services[0]
    assert spec.grouping.mode == "fields" and [f.text for f in spec.grouping.fields] == ["labels.alertname"]


def test_every_problem_is_reported_at_once():
    text = """
version: 1
services:
  - name: dup
    routing_key: short
    matchers: [{labels: {a: "^("}}]
  - name: dup
    tier: 9
    matchers: [{source: x}]
    runbook_url: mailto:x
"""
    found = problems(text)
    assert found == {
        "services[1].tier": "9 is greater than the maximum of 4",
        "services[0].routing_key": "expected a PagerDuty integration key: 32 letters or digits",
        "services[0].matchers[0].labels.a": "invalid regular expression: missing ), unterminated subpattern at position 1",
        "services[1].name": "duplicate service name 'dup' (first at services[0])",
        "services[1].runbook_url": "expected an http(s) URL, got 'mailto:x'",
    }


def test_catalog_error_str_has_one_line_per_problem():
    err = CatalogError("f.yaml", problems=[("a.b", "bad"), ("c[0]", "worse")])
    assert str(err) == "f.yaml: a.b: bad\nf.yaml: c[0]: worse"
    assert (err.path, err.reason) == ("a.b", "bad")
    single = CatalogError("f.yaml", "services[2].matchers[0].labels", "empty")
    assert str(single) == "f.yaml: services[2].matchers[0].labels: empty"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("labels.email", FieldPath("labels", ("email",))),
        ("custom_details.user.email", FieldPath("custom_details", ("user", "email"))),
        ("custom_details.ping time", FieldPath("custom_details", ("ping time",))),
        ("summary", FieldPath("summary")),
        ("labels", str),
        ("labels.a.b", str),
        ("custom_details", str),
        ("summary.x", str),
        ("labels. a", str),
        ("", str),
    ],
)
def test_field_paths(text, expected):
    parsed = FieldPath.parse(text)
    if expected is str:
        assert isinstance(parsed, str) and repr(text) in parsed
    else:
        assert parsed == expected and parsed.text == text


def test_load_catalog_reports_the_file_name(tmp_path):
    path = tmp_path / "services.yaml"
    path.write_text("version: 1\nservices: [{name: x}]\n")
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert str(info.value) == f"{path}: services[0]: 'matchers' is a required property"


# ---- fuzzing: a catalog either loads or raises CatalogError -------------------------------------

yaml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=12)
    | st.sampled_from(["^(", "^a.*$", "fields", "x" * 32]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_mutated_catalog_loads_or_raises_catalog_error(data):
    doc = yaml.safe_load(EXAMPLE.read_text())
    path = data.draw(st.sampled_from([p for p in _paths(doc) if p]))
    holder = doc
    for key in path[:-1]:
        holder = holder[key]
    if data.draw(st.booleans()) and isinstance(holder, dict):
        del holder[path[-1]]
    else:
        holder[path[-1]] = data.draw(yaml_values)
    try:
        cat = parse_catalog(yaml.safe_dump(doc), file="fuzz.yaml")
    except CatalogError as e:
        assert e.problems and all(isinstance(p, str) and isinstance(r, str) and r for p, r in e.problems)
        return
    assert Catalog.from_entries(cat.to_entries()).services == cat.services
    cat.match(alert(labels={"service": "checkout"}))


@settings(max_examples=200)
@given(text=st.text(max_size=200))
def test_fuzz_random_text_loads_or_raises_catalog_error(text):
    try:
        parse_catalog(text)
    except CatalogError:
        pass
