"""Topics <-> NATS subjects: reversible escaping, partitions, pattern filters (no server needed)."""

from __future__ import annotations

import random

import pytest

from poetctl.backends.nats import subjects
from poetctl.topics import matches


def test_plain_topic_maps_token_for_token() -> None:
    """poet/functions/x/execution is the subject poet.functions.x.execution (an event's: after its key token)."""
    assert subjects.to_subject("poet/functions/detect_drift/execution") == "poet.functions.detect_drift.execution"
    kh = subjects.key_hash("k")
    assert subjects.event_subject("poet/functions/x/execution", 3, "", kh) == f"poet.p.3.~{kh}.functions.x.execution"
    assert subjects.event_subject("poet/functions/x/execution", 3, "h", kh) == f"poet.p.3h.~{kh}.functions.x.execution"
    assert subjects.dead_subject("poet/functions/x/execution") == "poet.dead.functions.x.execution"


@pytest.mark.parametrize("seg", ["a.b", "*", ">", "a b", "tab\there", "100%", "%41", "ü", ""])
def test_special_tokens_are_escaped_reversibly(seg: str) -> None:
    """A segment with . * > whitespace or % becomes one safe token and comes back unchanged."""
    tok = subjects.escape_token(seg)
    assert not any(c in tok for c in ".*> \t")
    assert subjects.unescape_token(tok) == seg


ALPHABET = "ab.*> \t\n%~_-=:é中\x00\x7f/" + "".join(chr(c) for c in range(0x21, 0x7F))


@pytest.mark.parametrize("seed", range(20))
def test_any_topic_round_trips(seed: int) -> None:
    """from_subject(to_subject(t)) == t for random topics, and every token is a valid subject token."""
    rnd = random.Random(seed)
    for _ in range(200):
        segs = ["".join(rnd.choice(ALPHABET.replace("/", "")) for _ in range(rnd.randint(1, 12)))]
        segs += ["".join(rnd.choice(ALPHABET.replace("/", "")) for _ in range(rnd.randint(1, 6))) for _ in range(3)]
        topic = "/".join(segs[: rnd.randint(1, 4)])
        subject = subjects.to_subject(topic)
        assert subjects.from_subject(subject) == topic
        for tok in subject.split("."):
            assert tok and not any(c in tok for c in "*>") and not any(c.isspace() for c in tok)


def test_partition_is_stable_and_in_range() -> None:
    """The partition of a key is the same in every process and below the partition count."""
    assert subjects.partition_of("correlation_id=a", 16) == subjects.partition_of("correlation_id=a", 16)
    assert {subjects.partition_of(f"k{i}", 8) for i in range(200)} == set(range(8))


def _nats_match(filter_subject: str, subject: str) -> bool:
    f, s = filter_subject.split("."), subject.split(".")
    for i, tok in enumerate(f):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(f) == len(s)


TOPICS = [
    "poet/functions/detect_drift/execution",
    "poet/functions/a.b/updates",
    "poet/system/health",
    "poet/feedback/pending",
    "poet/custom/x/y/z",
]
PATTERNS = ["poet/functions/*", "poet/**", "poet/system/health", "poet/*/*/updates", "**", "*/system", "other/x"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pattern_filters_cover_what_the_pattern_matches(pattern: str) -> None:
    """Every topic a tail pattern matches lies under one of its NATS filter subjects (in any partition)."""
    filters = subjects.pattern_filters(pattern)
    for topic in TOPICS:
        for subject in (subjects.event_subject(topic, 5, "l", subjects.key_hash(topic)), _old_layout(topic, 5)):
            if matches(pattern, topic):
                assert any(_nats_match(f, subject) for f in filters), (pattern, topic, filters)
    # A consumer's filters may collide but none may take in another (the server refuses subsets).
    for f in filters:
        assert not any(g != f and subjects._covers(g, f) for g in filters), filters


def _old_layout(topic: str, p: int) -> str:
    """An event subject as poetctl published them before key tokens: ``poet.p.<n>.<tail>``."""
    return f"poet.p.{p}.{subjects.to_subject(topic).split('.', 1)[1]}"


@pytest.mark.parametrize("topic", TOPICS)
def test_an_event_subjects_key_and_topic_read_back_in_both_layouts(topic: str) -> None:
    """The key hash and the topic come back from an event subject; an old-layout subject has no key."""
    kh = subjects.key_hash("correlation_id=a")
    for lane in subjects.LANES:
        subject = subjects.event_subject(topic, 7, lane, kh)
        assert subjects.subject_key(subject) == kh
        assert subjects.subject_topic(subject) == topic
        assert subjects.lane_token(subject) == f"7{lane}"
        assert _nats_match(subjects.key_filter(7, lane, kh), subject)
        assert not _nats_match(subjects.key_filter(7, lane, subjects.key_hash("other")), subject)
        assert _nats_match(subjects.partition_filter(7, lane), subject)
    old = _old_layout(topic, 7)
    assert subjects.subject_key(old) is None
    assert subjects.subject_topic(old) == topic
    assert subjects.lane_token(old) == "7"
