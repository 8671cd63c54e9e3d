"""Notifications from the incident stream: channels (Slack, Teams, email, webhooks, Jira,
ServiceNow), the delivery stage that sends each notification once, and acting from a message."""
