"""Topics <-> NATS subjects, and the partition of an event. No NATS import: plain string work.

A topic ``poet/functions/x/execution`` is the subject ``poet.functions.x.execution``.
A topic segment holding a character that means something to NATS (``.``,
``*``, ``>``, whitespace) or that is not printable ASCII is escaped
``%XX`` per UTF-8 byte (and ``%`` itself, so the mapping is reversible);
every other segment is its own token, so ordinary topics read the same on
both backends.

Where events live (the partitioning design, see notes/natscore.md):

* ``poet.p.<n>.<topic tokens without the leading poet>`` - the event stream;
  ``n`` = ``crc32(partition key) % partitions`` computed by the publisher.
  That is the ``normal`` lane; ``high`` events go to ``poet.p.<n>h.<...>`` and
  ``low`` ones to ``poet.p.<n>l.<...>`` (priority lanes, one durable consumer
  each: :mod:`.lanes`).
* ``poet.dead.<topic tokens>`` - dead letters; ``poet.corrupt.<...>`` - quarantine.

A topic pattern becomes filter subjects that select a superset (NATS's
``>`` only ends a subject, and a poetctl pattern also matches the topics
below it); the caller checks each event with :func:`poetctl.topics.matches`.
"""

from __future__ import annotations

import hashlib
import re
import zlib

ROOT = "poet"
EVENTS = "poet.p"
DEAD = "poet.dead"
CORRUPT = "poet.corrupt"

# Printable ASCII but for what NATS or this escaping gives a meaning: space . * > %
_PLAIN = frozenset(chr(c) for c in range(0x21, 0x7F)) - set(".*>%")


def escape_token(seg: str) -> str:
    """One topic segment as a subject token (reversible: :func:`unescape_token`)."""
    if seg and all(c in _PLAIN for c in seg):
        return seg
    if not seg:
        return "%"  # an empty segment (never in a valid topic) still round-trips
    out = []
    for c in seg:
        if c in _PLAIN:
            out.append(c)
        else:
            out.extend(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
    return "".join(out)


def unescape_token(tok: str) -> str:
    """The topic segment a subject token stands for."""
    if "%" not in tok:
        return tok
    if tok == "%":
        return ""
    raw = bytearray()
    i = 0
    while i < len(tok):
        c = tok[i]
        if c == "%" and _is_hex(tok[i + 1 : i + 3]):
            raw.append(int(tok[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(c.encode("utf-8", "surrogatepass"))
            i += 1
    return raw.decode("utf-8", "surrogatepass")


def _is_hex(s: str) -> bool:
    return len(s) == 2 and all(c in "0123456789ABCDEFabcdef" for c in s)


def topic_tokens(topic: str) -> list[str]:
    return [escape_token(s) for s in topic.strip("/").split("/")]


def to_subject(topic: str) -> str:
    """``poet/functions/x/execution`` -> ``poet.functions.x.execution`` (segments escaped as needed)."""
    return ".".join(topic_tokens(topic))


def from_subject(subject: str) -> str:
    """The topic of a subject made by :func:`to_subject`."""
    return "/".join(unescape_token(t) for t in subject.split("."))


def _tail(topic: str) -> str:
    """The topic's tokens below its root (``poet/x/y`` -> ``x.y``; other roots keep theirs)."""
    toks = topic_tokens(topic)
    if toks[0] == ROOT and len(toks) > 1:
        toks = toks[1:]
    return ".".join(toks)


def partition_of(key: str, partitions: int) -> int:
    """The partition of a partition key (stable across processes and machines)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % partitions


# The lane suffix of each priority class ("" is the normal lane: the subjects events always had).
LANES = ("", "h", "l")
LANE_OF = {"high": "h", "normal": "", "low": "l"}
CLASS_OF_LANE = {"h": "high", "": "normal", "l": "low"}


def lane_of(priority: str | None) -> str:
    """The lane suffix of an event's ``priority`` (absent or unknown: normal)."""
    return LANE_OF.get(priority or "", "")


def event_subject(topic: str, partition: int, lane: str = "") -> str:
    """Where an event of ``topic`` in ``partition`` is published: ``poet.p.<n><lane>.<tail>``."""
    return f"{EVENTS}.{partition}{lane}.{_tail(topic)}"


def key_hash(key: str) -> str:
    """The ``Poet-Key`` header of an event: a 64-bit hash of its partition key (16 hex digits).

    A consumer reads it from headers alone to keep a key's order across lanes; a collision only
    makes an event wait, never reorders one.
    """
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def lane_token(subject: str) -> str | None:
    """``<n><lane>`` of an event subject ``poet.p.<n><lane>.<tail>`` (``"3"``, ``"3h"``); None for another."""
    if not subject.startswith(EVENTS + "."):
        return None
    tok = subject[len(EVENTS) + 1 :].partition(".")[0]
    head = tok[:-1] if tok[-1:] in ("h", "l") else tok
    return tok if head.isdigit() else None


def dead_subject(topic: str) -> str:
    """Where a dead letter of ``topic`` goes: ``poet.dead.<tail>``."""
    return f"{DEAD}.{_tail(topic)}"


def corrupt_subject(topic: str | None) -> str:
    """Where quarantined input goes (``poet.corrupt._`` when it has no readable topic)."""
    return f"{CORRUPT}.{_tail(topic) if topic else '_'}"


def partition_filter(partition: int, lane: str = "") -> str:
    return f"{EVENTS}.{partition}{lane}.>"


def pattern_filters(pattern: str, prefix: str = EVENTS) -> list[str]:
    """Filter subjects covering every topic ``pattern`` matches (a superset: check with ``matches``).

    ``prefix`` is ``poet.p`` (events: any partition), ``poet.dead`` or ``poet.corrupt``.
    """
    segs = pattern.strip("/").split("/")
    if segs and segs[0] == ROOT:
        segs = segs[1:]
    elif segs and segs[0] not in ("*", "**"):
        return []  # events' topics all start with poet/: nothing else can match
    elif segs and segs[0] == "*":
        segs = segs[1:]
    toks: list[str] = []
    for s in segs:
        if s == "**":
            break  # NATS's ">" ends a subject: everything from here on is checked by the caller
        toks.append("*" if s == "*" else escape_token(s))
    else:
        head = ([prefix, "*"] if prefix == EVENTS else [prefix]) + toks
        exact = ".".join(head)
        return [exact, exact + ".>"] if toks else [exact + ".>"]
    head = ([prefix, "*"] if prefix == EVENTS else [prefix]) + toks
    return [".".join([*head, ">"])] + ([".".join(head)] if toks else [])


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_=-]{1,200}\Z")


def kv_key(event_id: str) -> str:
    """The KV key of an event id (ids with other characters are hex-encoded, so any id fits)."""
    if _PLAIN_KEY.match(event_id):
        return "e." + event_id
    return "h." + event_id.encode("utf-8", "surrogatepass").hex()


__all__ = [
    "CLASS_OF_LANE",
    "CORRUPT",
    "DEAD",
    "EVENTS",
    "LANES",
    "LANE_OF",
    "corrupt_subject",
    "dead_subject",
    "escape_token",
    "event_subject",
    "from_subject",
    "key_hash",
    "kv_key",
    "lane_of",
    "lane_token",
    "partition_filter",
    "partition_of",
    "pattern_filters",
    "to_subject",
    "unescape_token",
]
