from __future__ import annotations

import pytest

from pagerstream.config import ConfigError, load_settings
from pagerstream.netguard import outbound_url_problem


@pytest.mark.parametrize("url", ["https://127.0.0.1/", "https://10.1.2.3", "https://169.254.169.254/latest",
                                 "https://[::1]:8443", "https://localhost", "https://0.0.0.0", "https://192.168.1.5",
                                 "http://events.pagerduty.com", "https://user:pw@events.pagerduty.com"])
def test_blocked_targets(url):
    assert outbound_url_problem(url, allow_private=False, resolve=False) is not None


@pytest.mark.parametrize("url", ["https://events.pagerduty.com", "https://events.eu.pagerduty.com/",
                                 "https://8.8.8.8"])
def test_public_targets(url):
    assert outbound_url_problem(url, allow_private=False, resolve=False) is None


def test_private_targets_need_the_explicit_switch():
    env = {"PAGERDUTY_EVENTS_URL": "http://127.0.0.1:8787"}
    with pytest.raises(ConfigError) as e:
        load_settings(env)
    assert e.value.problems[0][0] == "PAGERDUTY_EVENTS_URL"
    s = load_settings(env | {"PAGERSTREAM_ALLOW_PRIVATE_PD_URL": "true"})
    assert s.events_enqueue_url == "http://127.0.0.1:8787/v2/enqueue"


def test_metadata_endpoint_refused_for_ai_model_endpoint():
    with pytest.raises(ConfigError) as e:
        load_settings({"AI_MODEL_ENDPOINT": "http://169.254.169.254/v1"})
    assert "AI_MODEL_ENDPOINT" in str(e.value)
