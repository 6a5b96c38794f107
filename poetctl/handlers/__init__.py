"""Built-in handlers: the seed's ML-monitoring handlers, the learning engine, function state."""

from __future__ import annotations

from ..errors import UsageError
from ..router import EventRouter
from .learning import LearningEngine, LearningSettings
from .ml_monitoring import HandlerSwitches, MLMonitoringEventHandlers
from .state import FunctionStateHandlers


def register_builtin(router: EventRouter) -> MLMonitoringEventHandlers:
    """Subscribe the built-in handlers that poet.toml's ``[builtin_handlers]`` leaves on."""
    cfg = router.config
    try:
        switches = HandlerSwitches.from_config(dict(cfg.builtin_handlers))
        settings = LearningSettings.from_config(dict(cfg.learning))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"bad configuration: {exc}") from None
    engine = LearningEngine(router.stores.learning, settings)
    handlers = MLMonitoringEventHandlers(router, engine, switches)
    if switches.function_state:
        FunctionStateHandlers(router)
    if cfg.integrations:  # PagerDuty, Slack, webhooks, MLflow: only imported when poet.toml has some
        from ..integrations.wiring import register_integrations

        register_integrations(router)
    return handlers


__all__ = [
    "FunctionStateHandlers",
    "LearningEngine",
    "LearningSettings",
    "MLMonitoringEventHandlers",
    "register_builtin",
]
