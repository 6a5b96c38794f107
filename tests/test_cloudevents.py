"""CloudEvents 1.0 structured JSON <-> envelope (poetctl/cloudevents.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from poetctl import EventRouter
from poetctl.cloudevents import extension_names, format_time, from_cloudevent, parse_time, to_cloudevent
from poetctl.errors import InvalidData
from poetctl.event import Event, compute_checksum, verify_checksum
from poetctl.timeparse import parse_time as cli_time

CE_NAME = re.compile(r"^[a-z0-9]{1,20}$")
CORE = {"specversion", "id", "source", "type", "time", "datacontenttype", "data"}


def _all_sample_events(router: EventRouter, samples: dict[str, Any]) -> list[Event]:
    out = []
    for type_, doc in samples.items():
        for i, payload in enumerate(doc["valid"]):
            ev, _ = router.build(
                type_,
                payload,
                correlation_id=f"corr-{type_}-{i}" if i % 2 == 0 else None,
                causation_id="01900000-0000-7000-8000-000000000001" if i == 0 else None,
            )
            out.append(ev)
    return out


def test_round_trip_every_sample_type(router: EventRouter, samples: dict[str, Any]) -> None:
    """Every valid sample of every type survives envelope -> CloudEvent -> envelope exactly, checksum included."""
    events = _all_sample_events(router, samples)
    assert {e.type for e in events} == set(samples)
    for ev in events:
        env = ev.to_dict()
        back = from_cloudevent(to_cloudevent(env))
        assert back == env
        assert list(back) == list(env)  # on-disk key order too
        verify_checksum(back)


def test_attributes_follow_the_spec(router: EventRouter, samples: dict[str, Any]) -> None:
    """The CloudEvent has the required attributes, RFC 3339 time, JSON data and valid extension names."""
    ev, _ = router.build(
        "drift.detected",
        samples["drift.detected"]["valid"][0],
        correlation_id="drift-alert-123",
        causation_id="01900000-0000-7000-8000-000000000001",
        source="poet.generator",
    )
    ce = to_cloudevent(ev)
    assert ce["specversion"] == "1.0"
    assert (ce["id"], ce["source"], ce["type"]) == (ev.id, "poet.generator", "drift.detected")
    assert ce["datacontenttype"] == "application/json"
    assert ce["data"] == ev.payload
    assert ce["correlationid"] == "drift-alert-123"
    assert ce["causationid"] == "01900000-0000-7000-8000-000000000001"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ce["time"])
    assert abs(cli_time(ce["time"]) - ev.timestamp) < 1e-5
    assert ce["poettopic"] == ev.topic and ce["poetchecksum"] == ev.checksum
    for name in extension_names(ce):
        assert CE_NAME.match(name), name
        assert isinstance(ce[name], str | bool | int), name  # CloudEvents attribute types only
    assert "poettimestamp" not in ce  # microsecond timestamps travel in `time` alone


def test_exact_numbers_and_extra_metadata_round_trip() -> None:
    """Integer and sub-microsecond timestamps, expires_at and metadata with extra keys round-trip exactly."""
    for ts in (1764230400, 1764230400.123456789, 1764230400.5, 0.000001):
        env = (
            Event(
                id="custom-key.1",
                type="system.health",
                source="ops",
                timestamp=ts,
                topic="poet/system/health",
                payload={"status": "ok"},
                metadata={"version": "1.0", "environment": "prod", "service": "x", "replayed": True},
                expires_at=1764234000,
                correlation_id="c 1",
            )
            .seal()
            .to_dict()
        )
        ce = to_cloudevent(env)
        assert "poetmetadata" in ce and isinstance(ce["poetmetadata"], str)
        back = from_cloudevent(ce)
        assert back == env
        assert type(back["timestamp"]) is type(ts) and type(back["expires_at"]) is int
        assert compute_checksum(back) == env["checksum"]


def test_time_formatting_is_the_exact_inverse() -> None:
    """format_time/parse_time give back the same float for microsecond timestamps and honour offsets."""
    for ts in (1795768372.529236, 1700000000.0, 1.5, 1795768372.000001):
        assert parse_time(format_time(ts)) == ts
    assert parse_time("2026-11-27T09:00:00+01:00") == parse_time("2026-11-27T08:00:00Z")
    with pytest.raises(ValueError):
        parse_time("27/11/2026")


def test_foreign_cloudevent_becomes_an_emittable_envelope(router: EventRouter, samples: dict[str, Any]) -> None:
    """A CloudEvent without poet extensions maps to a partial envelope that EventRouter.ingest completes."""
    ce = {
        "specversion": "1.0",
        "id": "ext-42",
        "source": "https://ci.example/job/7",
        "type": "system.health",
        "time": "2026-11-27T08:00:00Z",
        "correlationid": "deploy-7",
        "data": samples["system.health"]["valid"][0],
    }
    env = from_cloudevent(ce)
    assert "checksum" not in env and "topic" not in env
    ev, keyed = router.ingest(env)
    assert keyed and ev.id == "ext-42" and ev.correlation_id == "deploy-7"
    assert ev.topic == "poet/system/health" and ev.timestamp == parse_time("2026-11-27T08:00:00Z")
    verify_checksum(ev.to_dict())


@pytest.mark.parametrize(
    "change, where",
    [
        ({"specversion": "0.3"}, "$.specversion"),
        ({"id": ""}, "$.id"),
        ({"data": "text"}, "$.data"),
        ({"datacontenttype": "text/plain"}, "$.datacontenttype"),
        ({"data_base64": "AAAA"}, "$.data_base64"),
        ({"time": "yesterday"}, "$.time"),
        ({"poettimestamp": "soon"}, "$.poettimestamp"),
    ],
)
def test_invalid_cloudevents_are_refused_with_the_attribute(change: dict[str, Any], where: str) -> None:
    """from_cloudevent raises InvalidData naming the offending attribute."""
    ce = {"specversion": "1.0", "id": "a1", "source": "s", "type": "system.health", "data": {}, **change}
    with pytest.raises(InvalidData) as info:
        from_cloudevent(ce)
    assert where in str(info.value)
