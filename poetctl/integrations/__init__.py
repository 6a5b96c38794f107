"""External systems: PagerDuty, Slack, signed webhooks, MLflow (handler factories over httpx)."""
