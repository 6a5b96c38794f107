"""The routing table (event type -> topic) and topic pattern matching.

Topics follow the seed's "Event Topics Structure". A pattern is a topic whose
segments may be ``*`` (exactly one segment) or ``**`` (any number, including
none). A pattern also matches every topic *below* what it names, so
``poet/functions/*`` matches ``poet/functions/detect_drift/execution``.
Topics map 1:1 to NATS subjects: ``/`` -> ``.``, ``*`` -> ``*``, ``**`` -> ``>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

from .errors import UsageError
from .ids import FUNCTION_NAME_RE, TYPE_RE, lazy_pattern

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SYSTEM_FUNCTIONS = "poet/functions/system"

# type -> topic template; "{fn}" is the payload's function_name.
# Types with "{fn}" fall back to SYSTEM_FUNCTIONS when the payload has none.
ROUTES: dict[str, str] = {
    "function.execution": "poet/functions/{fn}/execution",
    "function.feedback": "poet/functions/{fn}/feedback",
    "function.update": "poet/functions/{fn}/updates",
    "drift.detected": "poet/functions/{fn}/execution",
    "monitoring.completed": "poet/functions/{fn}/execution",
    "monitoring.performance_degraded": "poet/functions/{fn}/execution",
    "transpilation.completed": "poet/functions/{fn}/updates",
    "enhancement.completed": "poet/functions/{fn}/updates",
    "enhancement.regenerated": "poet/functions/{fn}/updates",
    "enhancement.regeneration_needed": "poet/functions/{fn}/updates",
    "learning.pattern_detected": SYSTEM_FUNCTIONS,
    "learning.false_positive_detected": SYSTEM_FUNCTIONS,
    "feedback.human_validation": "poet/feedback/pending",
    "feedback.model_retrained": "poet/feedback/pending",
    "feedback.alert_resolved": "poet/feedback/pending",
    "feedback.mlflow_validation": "poet/feedback/pending",
    "alert.create_external": "poet/system/alerts",
    "alert.created_external": "poet/system/alerts",
    "system.alert": "poet/system/alerts",
    "system.health": "poet/system/health",
    "system.metrics": "poet/system/metrics",
}

_SEGMENT_RE = lazy_pattern(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}\Z")
# Subscriptions: a type segment, or one with "*" wildcards; a handler name safe as a record key.
_TYPE_SEGMENT_RE = lazy_pattern(r"^[a-z][a-z0-9_]*\Z")
_GLOB_SEGMENT_RE = lazy_pattern(r"^(?:[a-z][a-z0-9_*]*|\*[a-z0-9_*]*)\Z")
HANDLER_NAME_RE = lazy_pattern(r"^[A-Za-z0-9_][A-Za-z0-9_.:<>@-]{0,199}\Z")


def default_template(event_type: str) -> str:
    """Topic template for a user type without ``x-poet-topic``: ``poet/custom/<a>/<b>``."""
    return "poet/custom/" + event_type.replace(".", "/")


def topic_for(event_type: str, payload: Mapping[str, Any], template: str | None = None) -> str:
    """The topic of an event: the routing table, else ``template``, else the default.

    ``{fn}`` in a template is replaced by ``payload['function_name']`` when that
    is a valid function name, otherwise the whole topic becomes
    ``poet/functions/system``.
    """
    tpl = ROUTES.get(event_type) or template or default_template(event_type)
    if "{fn}" in tpl:
        fn = payload.get("function_name")
        if isinstance(fn, str) and FUNCTION_NAME_RE.match(fn):
            return tpl.replace("{fn}", fn)
        return SYSTEM_FUNCTIONS
    return tpl


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` normalised (no leading/trailing ``/``) or raise UsageError."""
    p = pattern.strip("/")
    if not p:
        raise UsageError(f"empty topic pattern {pattern!r}: expected e.g. 'poet/functions/*'")
    for seg in p.split("/"):
        if seg in ("*", "**"):
            continue
        if not _SEGMENT_RE.match(seg):
            raise UsageError(
                f"bad topic pattern {pattern!r}: segment {seg!r} must be '*', '**' or letters, digits, '_' and '-'"
            )
    return p


def check_subscription(pattern: object, name: object) -> None:
    """Raise UsageError unless ``pattern`` can match event types and ``name`` is a safe handler name.

    A pattern is an event type (``drift.detected``) or a glob over types in
    which ``*`` stands for any characters (``drift.*``, ``*.completed``, ``*``).
    Segments are separated by single dots and use the characters of types
    (lowercase letters, digits, ``_``); anything else could never match a type
    (or, like ``[``, means something else to the glob matcher). A handler name
    is 1-200 letters, digits and ``_ . : - < > @``, not starting with a dot: it
    is written into completion records and derived ids, and must be stable.
    """
    if not isinstance(pattern, str) or not _type_glob_ok(pattern):
        raise UsageError(
            f"bad subscription pattern {pattern!r}: expected an event type such as 'drift.detected' or a glob "
            "such as 'drift.*' ('*' is the only wildcard; lowercase letters, digits and '_' between single dots)"
        )
    if not isinstance(name, str) or not HANDLER_NAME_RE.match(name):
        raise UsageError(
            f"bad handler name {name!r} for pattern {pattern!r}: expected 1-200 letters, digits and '_.:-<>@', "
            "not starting with '.'; pass a stable name=... to subscribe()"
        )


def _type_glob_ok(pattern: str) -> bool:
    if "*" not in pattern:
        return TYPE_RE.match(pattern) is not None
    return all(
        (_GLOB_SEGMENT_RE if "*" in seg else _TYPE_SEGMENT_RE).match(seg) is not None for seg in pattern.split(".")
    )


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    parts = []
    for seg in validate_pattern(pattern).split("/"):
        if seg == "**":
            parts.append(r"(?:/[^/]+)*")
        elif seg == "*":
            parts.append(r"/[^/]+")
        else:
            parts.append("/" + re.escape(seg))
    # Every segment carries its leading "/" and topics are matched as "/" + topic,
    # so "**" can match zero segments. The trailing group lets a pattern match
    # the topics below what it names.
    return re.compile("^" + "".join(parts) + r"(?:/.*)?$")


def matches(pattern: str, topic: str) -> bool:
    """True if ``topic`` is matched by ``pattern`` or lies below a topic it matches."""
    return _compile(pattern).match("/" + topic) is not None


def to_subject(topic_or_pattern: str, prefix: str = "") -> str:
    """Map a topic or pattern to a NATS subject (``/``->``.``, ``**``->``>``)."""
    segs = [">" if s == "**" else s for s in topic_or_pattern.strip("/").split("/")]
    subject = ".".join(segs)
    return f"{prefix}.{subject}" if prefix else subject
