"""Checks written without a regular expression (start-up) accept exactly what their patterns accept."""

from __future__ import annotations

import random
import re

from poetctl.backends.fs.priority import _pack
from poetctl.envelopefast import envelope_surely_valid
from poetctl.schemafiles import VERSION_NAME_RE, is_version_name

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CHECKSUM = re.compile(r"sha256:[0-9a-f]{64}")
ALPHABET = "0123456789abcdefABCDEF-g:sha256.json\n \u0661\u00b2x"


def mutations(s: str, rng: random.Random) -> list[str]:
    """``s`` and strings one edit away: each position replaced, deleted or doubled, plus random ones."""
    out = [s, s + "\n", "\n" + s, s.upper(), s[:-1], s + "0"]
    for i in range(len(s)):
        out += [s[:i] + c + s[i + 1 :] for c in rng.sample(ALPHABET, 4)]
        out += [s[:i] + s[i + 1 :], s[:i] + s[i] + s[i:]]
    out += ["".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 80))) for _ in range(300)]
    return out


def test_uuid_pack_accepts_exactly_the_pattern() -> None:
    """priority._pack packs exactly the lowercase UUIDs the pattern matched, to the same bytes."""
    rng = random.Random(7)
    for s in [*mutations("01a228bc-ca96-72f7-be26-fcff8f71446c", rng), "-" * 36, "0" * 36, "-" + "0" * 31 + "----"]:
        expected = bytes.fromhex(s.replace("-", "")) if UUID.fullmatch(s) else None
        assert _pack(s) == expected, repr(s)


def test_version_names_match_the_pattern() -> None:
    """is_version_name is VERSION_NAME_RE.fullmatch: positive integers without leading zeros, 9 digits at most."""
    rng = random.Random(8)
    names = ["1.json", "0.json", "01.json", "999999999.json", "1000000000.json", ".json", "1.jsonx", "1.JSON"]
    names += ["\u0661.json", "\u00b2.json", "1 .json", " 1.json", "1.json\n", "12a.json", "-1.json", "+1.json"]
    for base in names[:4]:
        names += mutations(base, rng)
    for name in names:
        assert is_version_name(name) == (VERSION_NAME_RE.fullmatch(name) is not None), repr(name)


def test_envelope_checksum_check_matches_the_pattern() -> None:
    """The envelope check accepts a checksum exactly when it is sha256: and 64 lowercase hex digits."""
    rng = random.Random(9)
    good = "sha256:" + "0123456789abcdef" * 4
    base = {
        "id": "01a228bc-ca96-72f7-be26-fcff8f71446c",
        "type": "system.health",
        "source": "poet",
        "timestamp": 1764441234.5,
        "topic": "poet/system/health",
        "payload": {},
        "metadata": {"environment": "dev", "schema_version": 1, "service": "poet", "version": "1.0"},
    }
    assert envelope_surely_valid(base)  # without a checksum: the rest of the envelope passes
    for c in [*mutations(good, rng), "sha256:" + "g" * 64, "sha256:" + "A" * 64, "sha256:", 7, None]:
        d = dict(base, checksum=c)
        expected = isinstance(c, str) and CHECKSUM.fullmatch(c) is not None
        assert envelope_surely_valid(d, checksum_verified=False) == expected, repr(c)
