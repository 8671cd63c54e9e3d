"""`pagerstream pagerduty ...`: commands that talk to the PagerDuty REST API or its webhooks."""

from __future__ import annotations

import click


@click.group()
def pagerduty() -> None:
    """PagerDuty REST API: webhooks subscriptions, on-call, account as code."""
