"""PagerDuty beyond the Events API: REST client, webhooks v3, on-call schedules."""
