"""Function state handlers: function.update and enhancement.regenerated move a function's version.

``updated_at`` is the event's timestamp, so ``poetctl state rebuild`` reproduces it.
"""

from __future__ import annotations

from ..event import Event
from ..router import EventRouter


class FunctionStateHandlers:
    """Keeps each function's current state and version history (``router.stores.state``) up to date."""

    def __init__(self, event_router: EventRouter) -> None:
        self.state = event_router.stores.state
        event_router.subscribe("function.update", self.handle_function_update, name="poet.function_update")
        event_router.subscribe("enhancement.regenerated", self.handle_regenerated, name="poet.regenerated")

    def handle_function_update(self, event: Event) -> None:
        p = event.payload
        self.state.record_version(
            p["function_name"],
            p["new_version"],
            {"reason": p["reason"], "changes": p["changes"], "source_event_type": event.type},
            event_id=event.id,
            previous_version=p["old_version"],
            at=event.timestamp,  # the event's time, not the handling time: state rebuilt from events is the same
        )

    def handle_regenerated(self, event: Event) -> None:
        p = event.payload
        self.state.record_version(
            p["function_name"],
            p["new_version"],
            {
                "reason": p["regeneration_reason"],
                "improvements": p["improvements"],
                "expected_impact": p["expected_impact"],
                "source_event_type": event.type,
            },
            event_id=event.id,
            previous_version=p["old_version"],
            at=event.timestamp,  # the event's time, not the handling time: state rebuilt from events is the same
        )
