"""Every topic pagerstream uses, with partitions, retention and cleanup chosen on purpose.

Keys (DESIGN: keys decide locality):
- alerts.raw            key = the alert's identity at the source (rk hash:dedup_key, Alertmanager groupKey)
                        so that the trigger and resolve of one alert stay in order.
- alerts.normalized     key = group_key: dedup and incident state for a group live on one partition.
- incidents             key = incident_id.
- pagerduty.outbox/.retry key = stream_key (rk hash:pd dedup_key): one key's calls stay in order.
- pagerduty.webhooks     key = PagerDuty incident id (else resource id): one incident's webhooks stay in order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pagerstream.connections import KafkaTarget, kafka_admin

DAY_MS = 86_400_000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int  # 0 = the configured partition count
    retention_ms: int
    compact: bool = False
    doc: str = ""
    max_message_bytes: int = 0  # 0 = the broker's default (1 MB)

    def config(self) -> dict[str, str]:
        # min.insync.replicas is not set here: forcing 1 overrode a cluster's own setting, so acks=all
        # on 3 brokers meant one copy. The broker's default applies (2 is the usual choice at RF 3).
        c = {"retention.ms": str(self.retention_ms)}
        if self.compact:
            c["cleanup.policy"] = "compact"
            c["min.compaction.lag.ms"] = "60000"
        else:
            c["cleanup.policy"] = "delete"
        if self.max_message_bytes:
            c["max.message.bytes"] = str(self.max_message_bytes)
        return c


def topic_specs(prefix: str = "") -> dict[str, TopicSpec]:
    p = prefix
    specs = [
        TopicSpec(f"{p}alerts.raw", 0, 7 * DAY_MS, doc="RawAlert: what sources sent, byte for byte"),
        TopicSpec(f"{p}alerts.normalized", 0, 7 * DAY_MS, doc="Alert: normalized + enriched, keyed by group_key"),
        TopicSpec(f"{p}incidents", 0, 30 * DAY_MS, doc="IncidentEvent: every incident change with its reason"),
        TopicSpec(f"{p}pagerduty.outbox", 0, 7 * DAY_MS, doc="PagerDutyEvent: calls to make, keyed by stream_key"),
        TopicSpec(f"{p}pagerduty.retry", 0, 7 * DAY_MS, doc="PagerDutyEvent: calls waiting for PagerDuty"),
        TopicSpec(f"{p}pagerduty.dead-letter", 0, 30 * DAY_MS, doc="DeadLetter: calls PagerDuty refused for good"),
        TopicSpec(f"{p}alerts.dead-letter", 0, 30 * DAY_MS, doc="DeadLetter: records a stage could not process"),
        TopicSpec(f"{p}alerts.rates", 0, 1 * DAY_MS, doc="internal: trigger times keyed by service (rate series)"),
        TopicSpec(f"{p}incidents.predicted", 0, 30 * DAY_MS,
                  doc="PredictedIncident: a service's alert rate looks anomalous"),
        TopicSpec(f"{p}pagerduty.webhooks", 0, 30 * DAY_MS,
                  doc="PagerDutyWebhook: verified V3 webhook deliveries, keyed by incident id (else resource id)"),
        # Compacted and single-partition: every worker reads all of it; -1 keeps the latest per service forever.
        TopicSpec(f"{p}pagerstream.catalog", 1, -1, compact=True, doc="ServiceEntry: the services catalog"),
        # One partition: one learner applies feedback in order; 90 days so a model can be relearned.
        TopicSpec(f"{p}models.feedback", 1, 90 * DAY_MS, doc="ModelFeedback: labels the classifier learns from"),
        TopicSpec(f"{p}models.checkpoints", 1, -1, compact=True, max_message_bytes=16 * 2**20,
                  doc="Fernet-sealed model checkpoints, latest per model name (key)"),
        TopicSpec(f"{p}notifications.retry", 0, 7 * DAY_MS,
                  doc="internal: incident changes whose notifications are still pending (JSON)"),
        TopicSpec(f"{p}notifications.history", 0, 30 * DAY_MS,
                  doc="JSON: every notification attempt (destination, status, outcome, answer), key incident_id"),
        TopicSpec(f"{p}notifications.dead-letter", 0, 30 * DAY_MS,
                  doc="JSON lines: notifications given up, with the provider's answer (notifications replay)"),
        TopicSpec(f"{p}metrics.points", 0, 1 * DAY_MS,
                  doc="JSON {series, ts, value}: any metric stream to score for anomalies, keyed by series"),
        # Compacted: every record is a full snapshot of one incident's lifecycle, so the latest per key is
        # all a reader needs; compaction keeps one record per incident instead of one per change.
        TopicSpec(f"{p}incidents.lifecycle", 0, -1, compact=True,
                  doc="IncidentLifecycle: pagerstream incident + PagerDuty webhooks joined, keyed by incident_id"),
        # One partition = one hash chain in one total order; -1 keeps it forever (pagerstream/audit.py).
        TopicSpec(f"{p}audit", 1, -1, doc="AuditRecord: hash-chained decisions and human/API actions (audit verify)"),
    ]
    return {s.name.removeprefix(p): s for s in specs}


async def create_topics(bootstrap: KafkaTarget, prefix: str, partitions: int, replication: int) -> list[str]:
    """Create missing topics; return the names created. Existing topics are left as they are."""
    admin = kafka_admin(bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(s.name, s.partitions or partitions, replication, topic_configs=s.config())
            for s in topic_specs(prefix).values()
            if s.name not in existing
        ]
        created: list[str] = []
        for t in new:  # one by one so one existing topic (race with another worker) does not fail all
            try:
                await admin.create_topics([t])
                created.append(t.name)
            except TopicAlreadyExistsError:
                pass
        # Wait until metadata shows them, so producers started right after do not race.
        for _ in range(50):
            if set(created) <= set(await admin.list_topics()):
                break
            await asyncio.sleep(0.1)
        return created
    finally:
        await admin.close()
