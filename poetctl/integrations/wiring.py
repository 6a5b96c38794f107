"""Build the enabled integrations from poet.toml and subscribe them; ``integrations check``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..backends.fs.layout import SpoolLayout
from ..config import Config
from ..router import EventRouter
from .breaker import Breaker
from .http import Outbound
from .settings import FeedbackLinks, Integration, integrations


class Built(Protocol):
    def register(self) -> None: ...
    def check(self) -> str: ...


def outbound_for(it: Integration, layout: SpoolLayout | None) -> Outbound:
    """The HTTP client of ``it``: its timeouts, and its breaker shared through ``layout``'s run/ directory."""
    breaker = Breaker(
        it.name,
        layout=layout,
        failures=int(it.get("breaker_failures")),
        cooldown=float(it.get("breaker_cooldown")),
    )
    return Outbound(
        it.name,
        connect_timeout=float(it.get("connect_timeout")),
        read_timeout=float(it.get("read_timeout")),
        breaker=breaker,
    )


def build(router: EventRouter, it: Integration, links: FeedbackLinks | None) -> Built | None:
    """The handler object of integration ``it`` (None for a kind without one)."""
    out = outbound_for(it, router.layout)
    if it.kind == "pagerduty":
        from .pagerduty import PagerDutyIntegration

        return PagerDutyIntegration(router, it, out, links)
    if it.kind == "slack":
        from .slack import SlackIntegration

        return SlackIntegration(router, it, out, links)
    if it.kind == "webhook":
        from .webhooks import WebhookIntegration

        return WebhookIntegration(router, it, out)
    if it.kind == "mlflow":
        from .mlflow import MLflowIntegration

        return MLflowIntegration(router, it, out)
    return None


def register_integrations(router: EventRouter) -> list[str]:
    """Subscribe every enabled integration on ``router``; return their names.

    Raises :class:`ConfigError` (78) when an enabled integration's secret or
    URL cannot be resolved: better not to start than to dead-letter every alert.
    """
    cfg = router.config
    if not cfg.integrations:
        return []
    links = FeedbackLinks.from_config(cfg)
    names = []
    for it in integrations(cfg):
        if not it.enabled:
            continue
        built = build(router, it, links)
        if built is not None:
            built.register()
            names.append(it.name)
    return names


@dataclass(slots=True)
class CheckResult:
    name: str
    kind: str
    ok: bool
    detail: str
    breaker: dict[str, Any] | None = None


def check_all(cfg: Config) -> list[CheckResult]:
    """Try each configured, enabled integration's endpoint once (no breaker; nothing paged or posted).

    The feedback page (``[serve] public_url``), when links are configured, is
    checked too: alerts would carry links to it.
    """
    router = EventRouter(config=cfg, create_spool=False)
    results: list[CheckResult] = []
    try:
        links = FeedbackLinks.from_config(cfg)
        if links is not None:
            results.append(CheckResult("feedback", "feedback page", True, _check_feedback(links)))
    except Exception as exc:  # reported like any other endpoint; the integrations are still checked
        links = None
        results.append(CheckResult("feedback", "feedback page", False, str(exc)))
    for it in integrations(cfg):
        if not it.enabled:
            results.append(CheckResult(it.name, it.kind, True, "disabled (enabled = false): not checked"))
            continue
        try:
            built = build(router, it, links)
            detail = built.check() if built is not None else "nothing to check"
            out = getattr(built, "outbound", None)
            if isinstance(out, Outbound):
                out.close()
            results.append(CheckResult(it.name, it.kind, True, detail, _breaker(it, router.layout)))
        except Exception as exc:  # each failure is reported; the others are still checked
            results.append(CheckResult(it.name, it.kind, False, str(exc), _breaker(it, router.layout)))
    return results


def _check_feedback(links: FeedbackLinks) -> str:
    out = Outbound("feedback", connect_timeout=5.0, read_timeout=15.0, breaker=None)
    try:
        out.request("GET", links.base_url.rstrip("/") + "/healthz", use_breaker=False)
    finally:
        out.close()
    return f"[serve] public_url reachable ({len(links.secrets)} link secret(s))"


def _breaker(it: Integration, layout: SpoolLayout) -> dict[str, Any] | None:
    try:
        return Breaker(it.name, layout=layout).state()
    except Exception:
        return None
