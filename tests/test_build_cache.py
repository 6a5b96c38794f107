"""The builder's per-type knowledge (newest version, validator, topic) never changes a verdict or a topic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from poetctl import EventRouter
from poetctl.backends.memory import MemoryTransport
from poetctl.config import Config
from poetctl.errors import InvalidData
from poetctl.schemas import SchemaRegistry
from poetctl.topics import SYSTEM_FUNCTIONS

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def thing(required: list[str]) -> dict[str, Any]:
    props = {k: {"type": "integer"} for k in required}
    return {"$schema": DRAFT, "type": "object", "required": required, "properties": props}


def registry_with(d: Path, *schemas: dict[str, Any]) -> SchemaRegistry:
    (d / "custom.thing").mkdir(parents=True)
    for n, s in enumerate(schemas, 1):
        (d / "custom.thing" / f"{n}.json").write_bytes(orjson.dumps(s))
    return SchemaRegistry([d])


def memory_router(registry: SchemaRegistry | None = None) -> EventRouter:
    return EventRouter(transport=MemoryTransport(), registry=registry)


def test_a_bad_payload_after_good_ones_of_its_type_is_refused_and_worded(samples: dict[str, Any]) -> None:
    """A type seen before still validates each payload, with the same message as the first time."""
    bad = dict(samples["drift.detected"]["valid"][0], drift_score="high")
    with pytest.raises(InvalidData) as fresh:
        memory_router().build("drift.detected", bad)
    router = memory_router()
    router.build("drift.detected", samples["drift.detected"]["valid"][0])
    with pytest.raises(InvalidData) as known:
        router.build("drift.detected", bad)
    assert str(known.value) == str(fresh.value) and "drift_score" in str(known.value)


def test_a_function_topic_follows_each_payload(samples: dict[str, Any]) -> None:
    """function.* topics come from each event's function_name, not from the first event of the type."""
    router = memory_router()
    base = samples["function.execution"]["valid"][0]
    a = router.build("function.execution", dict(base, function_name="alpha"))[0]
    b = router.build("function.execution", dict(base, function_name="beta"))[0]
    assert (a.topic, b.topic) == ("poet/functions/alpha/execution", "poet/functions/beta/execution")
    assert router.build("function.execution", dict(base, function_name="alpha"))[0].topic == a.topic
    router.config.validation = False  # names the schema refuses still get topic_for's fallback
    for name in ("not/a name", 7):
        assert router.build("function.execution", dict(base, function_name=name))[0].topic == SYSTEM_FUNCTIONS


def test_a_new_registry_is_consulted(tmp_path: Path) -> None:
    """Replacing router.registry forgets what the old one said (newest version, schema)."""
    router = memory_router(registry_with(tmp_path / "one", thing(["count"])))
    ev = router.build("custom.thing", {"count": 1})[0]
    assert ev.metadata["schema_version"] == 1
    router.registry = registry_with(tmp_path / "two", thing(["count"]), thing(["amount"]))
    with pytest.raises(InvalidData, match="amount"):
        router.build("custom.thing", {"count": 1})
    assert router.build("custom.thing", {"amount": 1})[0].metadata["schema_version"] == 2


def test_validation_switch_is_read_per_event(samples: dict[str, Any]) -> None:
    """config.validation turned off and on again after a type is known takes effect at once."""
    router = EventRouter(transport=MemoryTransport(), config=Config())
    router.build("drift.detected", samples["drift.detected"]["valid"][0])
    bad = dict(samples["drift.detected"]["valid"][0], drift_score="high")
    router.config.validation = False
    assert router.build("drift.detected", bad)[0].payload["drift_score"] == "high"
    router.config.validation = True
    with pytest.raises(InvalidData):
        router.build("drift.detected", bad)


def test_an_older_chosen_version_is_used_for_a_known_type(tmp_path: Path) -> None:
    """schema_version= still picks that version after the type's newest has been used."""
    router = memory_router(registry_with(tmp_path / "s", thing(["count"]), thing(["amount"])))
    assert router.build("custom.thing", {"amount": 1})[0].metadata["schema_version"] == 2
    ev = router.build("custom.thing", {"count": 1}, schema_version=1)[0]
    assert ev.metadata["schema_version"] == 1
    with pytest.raises(InvalidData):
        router.build("custom.thing", {"count": 1})
