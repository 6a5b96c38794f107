"""Topics <-> NATS subjects, and the partition of an event. No NATS import: plain string work.

A topic ``poet/functions/x/execution`` is the subject ``poet.functions.x.execution``.
A topic segment holding a character that means something to NATS (``.``,
``*``, ``>``, whitespace) or that is not printable ASCII is escaped
``%XX`` per UTF-8 byte (and ``%`` itself, so the mapping is reversible);
every other segment is its own token, so ordinary topics read the same on
both backends.

Where events live (the partitioning design, see notes/natscore.md):

* ``poet.p.<n>.~<key hash>.<topic tokens without the leading poet>`` - the event
  stream; ``n`` = ``crc32(partition key) % partitions`` computed by the publisher.
  That is the ``normal`` lane; ``high`` events go to ``poet.p.<n>h.~<key hash>.<...>``
  and ``low`` ones to ``poet.p.<n>l.~<key hash>.<...>`` (priority lanes, one durable
  consumer each: :mod:`.lanes`). The key token (``~`` + the ``Poet-Key`` hash; no
  topic segment starts with ``~``) lets a consumer ask the server for the next
  event of a key in a lane (a direct get by ``next_by_subj``). Events published
  before it existed lack it (``poet.p.<n><lane>.<tail>``, the old layout): they
  keep working (:mod:`.lanes` reads their headers instead).
* ``poet.dead.<topic tokens>`` - dead letters; ``poet.corrupt.<...>`` - quarantine.

A topic pattern becomes filter subjects that select a superset (NATS's
``>`` only ends a subject, and a poetctl pattern also matches the topics
below it); the caller checks each event with :func:`poetctl.topics.matches`.
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=4096)  # a publisher's few topics: built once each (every event's subject has one)
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


KEY_MARK = "~"  # starts the key token of an event subject (a topic segment never starts with it)


def event_subject(topic: str, partition: int, lane: str, kh: str) -> str:
    """Where an event of ``topic`` in ``partition`` is published: ``poet.p.<n><lane>.~<kh>.<tail>``.

    Every publisher builds its subject here; ``kh`` is the event's :func:`key_hash` (its ``Poet-Key``).
    """
    return f"{EVENTS}.{partition}{lane}.{KEY_MARK}{kh}.{_tail(topic)}"


def key_filter(partition: int, lane: str, kh: str) -> str:
    """The subjects of the events of one key hash in one lane of a partition (a direct get's ``next_by_subj``)."""
    return f"{EVENTS}.{partition}{lane}.{KEY_MARK}{kh}.>"


def subject_key(subject: str) -> str | None:
    """The key hash in an event subject; None for one published before key tokens (the old layout)."""
    toks = subject.split(".", 4)
    if len(toks) > 3 and toks[3][:1] == KEY_MARK:
        return toks[3][1:]
    return None


def subject_topic(subject: str) -> str:
    """The topic of an event subject, either layout (``poet.p.3.~kh.functions.x`` -> ``poet/functions/x``)."""
    toks = subject.split(".")[3:]
    if toks and toks[0][:1] == KEY_MARK:
        toks = toks[1:]
    return from_subject(".".join([ROOT, *toks]))


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
    deep = False
    for s in segs:
        if s == "**":
            deep = True  # NATS's ">" ends a subject: everything from here on is checked by the caller
            break
        toks.append("*" if s == "*" else escape_token(s))
    # Events: a partition token, then (key subjects) a key token or (the old layout) the topic at once.
    heads = [[prefix, "*", "*"], [prefix, "*"]] if prefix == EVENTS else [[prefix]]
    out: list[str] = []
    for head in heads:
        h = ".".join(head + toks)
        if not deep:
            out += [h, h + ".>"] if toks else [h + ".>"]
        else:
            out += [h + ".>"] + ([h] if toks else [])
    return _widest(out)


def _covers(a: str, b: str) -> bool:
    """True if filter ``a`` matches every subject filter ``b`` matches (NATS wildcards)."""
    ta, tb = a.split("."), b.split(".")
    for i, x in enumerate(ta):
        if x == ">":
            return len(tb) > i
        if i >= len(tb) or tb[i] == ">" or (x != "*" and (tb[i] == "*" or tb[i] != x)):
            return False
    return len(ta) == len(tb)


def _widest(filters: list[str]) -> list[str]:
    """``filters`` without those another one covers (a consumer's filters may not be subsets of each other)."""
    out: list[str] = []
    for i, f in enumerate(filters):
        if f in out:
            continue
        if any(_covers(g, f) for j, g in enumerate(filters) if j != i and g != f):
            continue
        out.append(f)
    return out


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
    "KEY_MARK",
    "LANES",
    "LANE_OF",
    "corrupt_subject",
    "dead_subject",
    "escape_token",
    "event_subject",
    "from_subject",
    "key_filter",
    "key_hash",
    "kv_key",
    "lane_of",
    "lane_token",
    "partition_filter",
    "partition_of",
    "pattern_filters",
    "subject_key",
    "subject_topic",
    "to_subject",
    "unescape_token",
]
