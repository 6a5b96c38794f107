"""The reader's cheap proofs: events stored in canonical key order, and the bracket bound for depth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from poetctl import EventRouter
from poetctl.backends.fs import reader
from poetctl.backends.fs.reader import CorruptEvent, decode_event, more_openers
from poetctl.event import CHECKSUM_PREFIX, MAX_DEPTH, canonical, checksum_of, without_checksum_member


def _stored(tmp_path: Path, payload: dict[str, Any]) -> dict[str, Any]:
    """An event as emit wrote it (a dict with its checksum)."""
    router = EventRouter(spool=tmp_path / "spool")
    eid = router.emit("system.metrics", payload)
    data = (tmp_path / "spool" / "events" / "pending" / f"{eid}.json").read_bytes()
    d: dict[str, Any] = orjson.loads(data)
    return d


def _canonical_file(d: dict[str, Any]) -> bytes:
    """``d`` as emit stores it: its canonical bytes with the checksum member in its sorted place."""
    return orjson.dumps(d, option=orjson.OPT_SORT_KEYS) + b"\n"


def _forged(data: bytes, old: bytes, new: bytes, rehash: bool) -> bytes:
    """``data`` with ``old`` replaced; with ``rehash``, its checksum made over the forged bytes themselves."""
    forged = data.replace(old, new, 1)
    if not rehash:
        return forged
    stated = orjson.loads(data)["checksum"]
    rest = without_checksum_member(forged, stated)
    assert rest is not None
    return forged.replace(stated.encode(), checksum_of(rest).encode(), 1)


def _metrics(n: int) -> dict[str, Any]:
    return {"service": "svc", "metrics": {f"m{(k * 7) % n:03d}": k * 0.5 for k in range(n)}}


def test_canonical_order_file_is_proved_without_counting_colons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large event stored in canonical order is proved exact without counting colons (its bytes are canonical)."""
    d = _stored(tmp_path, _metrics(300))
    data = _canonical_file(d)

    def no_count(*a: Any) -> bool:
        raise AssertionError("surely_exact called for a canonical file")

    monkeypatch.setattr(reader, "surely_exact", no_count)
    ev = decode_event(data, None, expected_id=d["id"])
    assert ev.payload == d["payload"]
    assert ev.checksum == d["checksum"]


def test_emit_order_file_still_counts_and_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file in any other key order (as older versions wrote) takes the colon count, and passes it."""
    d = _stored(tmp_path, _metrics(300))
    calls: list[int] = []
    real = reader.surely_exact  # type: ignore[attr-defined]

    def counted(*a: Any) -> bool:
        calls.append(1)
        return real(*a)

    monkeypatch.setattr(reader, "surely_exact", counted)
    # Keys in reverse order, as no version of emit writes them (older ones kept the caller's order).
    d["payload"]["metrics"] = dict(reversed(d["payload"]["metrics"].items()))
    other = orjson.dumps(dict(reversed(d.items())))
    assert other != _canonical_file(d)[:-1]
    ev = decode_event(other, None, expected_id=d["id"])
    assert ev.payload == d["payload"]
    assert calls == [1]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"service":"svc"', b'"service":"svc","service":"svc"'),  # a duplicate member, in sorted place
        (b'"m000":0.0', b'"m000":0.0,"m000":0.0'),  # a duplicate in a nested object
    ],
)
@pytest.mark.parametrize("n", [20, 300])  # below and above the size from which files are compared
@pytest.mark.parametrize("rehash", [False, True])
def test_canonical_looking_file_with_a_duplicate_key_is_rejected(
    tmp_path: Path, old: bytes, new: bytes, n: int, rehash: bool
) -> None:
    """A key-sorted file with a duplicate member is refused (its checksum over what it parses to, or over its bytes)."""
    d = _stored(tmp_path, _metrics(n))
    data = _canonical_file(d)
    assert old in data
    forged = _forged(data, old, new, rehash)
    with pytest.raises(CorruptEvent) as exc:
        decode_event(forged, None, expected_id=d["id"])
    assert exc.value.reason == "bad_json"
    assert "duplicate" in exc.value.detail


def test_canonical_looking_file_with_a_wide_integer_is_rejected(tmp_path: Path) -> None:
    """A key-sorted file holding an integer beyond 64 bits is refused, whatever its checksum says."""
    d = _stored(tmp_path, {"service": "svc", "metrics": {"n": 1, **_metrics(300)["metrics"]}})
    line = _canonical_file(d)
    for rehash in (False, True):
        data = _forged(line, b'"n":1', b'"n":18446744073709551616', rehash)
        assert data != line
        with pytest.raises(CorruptEvent) as exc:
            decode_event(data, None, expected_id=d["id"])
        assert exc.value.reason in ("bad_json", "bad_checksum")


def test_canonical_order_file_with_a_changed_value_fails_its_checksum(tmp_path: Path) -> None:
    """Canonical order proves exactness, not integrity: a changed value is still a bad checksum."""
    d = _stored(tmp_path, _metrics(20))
    data = _canonical_file(d).replace(b'"service":"svc"', b'"service":"svd"', 1)
    with pytest.raises(CorruptEvent) as exc:
        decode_event(data, None, expected_id=d["id"])
    assert exc.value.reason == "bad_checksum"


@pytest.mark.parametrize("n", [0, 1, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 3 * MAX_DEPTH])
@pytest.mark.parametrize("mix", ["{", "[", "both", "in strings"])
@pytest.mark.parametrize("pad", [0, 5000])
def test_more_openers_agrees_with_counting_brackets(n: int, mix: str, pad: int) -> None:
    """The bracket bound gives the verdict of counting every { and [ (strings included), at every size."""
    if mix == "both":
        body = b"".join(b"{" if i % 2 else b"[" for i in range(n))
    elif mix == "in strings":
        body = b'"' + b"{" * n + b'"'
    else:
        body = mix.encode() * n
    data = b"x" * pad + body + b"y" * pad
    assert more_openers(data, MAX_DEPTH) == (data.count(b"{") + data.count(b"[") > MAX_DEPTH)


def test_payload_nested_past_the_limit_is_still_refused(tmp_path: Path) -> None:
    """A payload nested deeper than the limit (in a file otherwise large) is refused as bad_json."""
    d = _stored(tmp_path, _metrics(200))
    deep: Any = 1
    for _ in range(MAX_DEPTH + 1):
        deep = {"a": deep}
    d["payload"]["metrics"] = {"deep": deep}
    rest = {k: v for k, v in d.items() if k != "checksum"}
    d["checksum"] = checksum_of(canonical(rest))
    with pytest.raises(CorruptEvent) as exc:
        decode_event(_canonical_file(d), None, expected_id=d["id"])
    assert exc.value.reason == "bad_json"
    assert "deep" in exc.value.detail or "nest" in exc.value.detail


def test_canonical_file_is_compared_without_a_spliced_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large canonical file is proved by comparing it in place: no copy of it without its checksum member is built."""
    d = _stored(tmp_path, _metrics(300))
    data = _canonical_file(d)

    def no_splice(*a: Any) -> bytes:
        raise AssertionError("the reader built the spliced copy")

    monkeypatch.setattr(reader, "without_checksum_member", no_splice, raising=False)
    monkeypatch.setattr(reader, "surely_exact", no_splice)  # and it was proved by the comparison, not by counting
    ev = decode_event(data, None, expected_id=d["id"])
    assert ev.payload == d["payload"]


_MEMBER = b'"checksum":"' + (CHECKSUM_PREFIX + "ab" * 32).encode() + b'"'


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,' + _MEMBER + b',"b":2}\n',  # between two members
        b'{"a":1,' + _MEMBER + b',"b":2}',  # no final newline
        b'{"a":1,' + _MEMBER + b"}\n",  # the last member
        b"{" + _MEMBER + b',"b":2}\n',  # the first member
        b"{" + _MEMBER + b"}\n",  # the only member: no comma either side
        b'{"a":1,' + _MEMBER + b',"b":2}\n\n',  # two newlines: one is dropped
        b'{"a":1,' + _MEMBER,  # the member ends the data
        b'{"a":1\n,' + _MEMBER,  # ... after a newline
        b'{"a":1,' + _MEMBER + b',"b":2,' + _MEMBER + b"}\n",  # twice: the first is taken out
        b'{"a":1,"b":2}\n',  # no member
        _MEMBER + b',"b":2}\n',  # at the very start
    ],
)
def test_stored_canonical_agrees_with_splicing(data: bytes) -> None:
    """The in-place comparison gives the verdict of splicing the member out and comparing, for every placement."""
    stated = CHECKSUM_PREFIX + "ab" * 32
    rest = without_checksum_member(data, stated)
    candidates = [b"", data, data[:-1], b'{"a":1,"b":2}', b'{"a":1}', b'{"b":2}', b"{}"]
    if rest is not None:
        candidates += [rest, rest + b"\n", rest[:-1], b"x" + rest[1:], rest[:-1] + b"x"]
    for canon in candidates:
        assert reader.stored_canonical(data, canon, stated) == (rest is not None and rest == canon), canon
    for other in (stated[:-1], stated + "a", "md5:" + "ab" * 33 + "a"):
        assert reader.stored_canonical(data, rest or b"", other) is False
