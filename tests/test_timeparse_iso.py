"""timeparse.iso_or_none shows times exactly as datetime does, without importing datetime (start-up)."""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys

import pytest
from conftest import clean_env

from poetctl.timeparse import iso, iso_or_none, number_text


def by_datetime(ts: object) -> str | None:
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")  # type: ignore[arg-type]
    except (OverflowError, ValueError, OSError, TypeError):
        return None


YEAR_1 = -62135596800  # 0001-01-01T00:00:00Z
YEAR_10000 = 253402300800  # 10000-01-01T00:00:00Z
EDGES: list[object] = [
    0,
    0.0,
    -0.0,
    1,
    -1,
    0.5,
    -0.5,
    1.0005,
    1.0015,
    -1.0005,
    0.9999995,
    0.9999994999,
    -0.0000005,
    0.0000005,
    0.0000015,
    1764441234.567891,
    1764441234.9999996,
    1764441234.0004999,
    1764441234.0005,
    YEAR_1,
    YEAR_1 - 1,
    YEAR_1 - 0.0000004,
    YEAR_1 + 0.0000004,
    YEAR_10000,
    YEAR_10000 - 1,
    YEAR_10000 - 0.0000004,
    YEAR_10000 - 0.000001,
    YEAR_10000 - 0.0000006,
    946684800,
    7258118400,
    1e300,
    -1e300,
    10**400,
    -(10**400),
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    False,
    "1",
    None,
    [1],
    2**63,
    -(2**63),
    2**62,
]


@pytest.mark.parametrize("ts", EDGES, ids=repr)
def test_iso_or_none_matches_datetime_on_edges(ts: object) -> None:
    """Rounding to the microsecond, year bounds and non-numbers: the same text or None as datetime."""
    assert iso_or_none(ts) == by_datetime(ts)  # type: ignore[arg-type]


def test_iso_or_none_matches_datetime_on_random_times() -> None:
    """Random times over the whole date range, and at sub-millisecond steps, match datetime."""
    rng = random.Random(14)
    values = [rng.uniform(YEAR_1 - 1e6, YEAR_10000 + 1e6) for _ in range(20000)]
    values += [1764441234 + rng.randrange(0, 10**7) / 10**7 for _ in range(20000)]
    values += [-rng.randrange(0, 10**7) / 10**7 for _ in range(5000)]
    values += [rng.randrange(YEAR_1, YEAR_10000) for _ in range(5000)]
    wrong = [v for v in values if iso_or_none(v) != by_datetime(v)]
    assert wrong == []


def test_iso_shows_the_number_where_no_date_fits() -> None:
    """A time outside the years datetime knows is shown as the number itself."""
    assert iso(1e300) == number_text(1e300) != ""
    assert iso(1764441234.5678) == "2025-11-29T18:33:54.567Z"


def test_showing_a_time_imports_no_datetime() -> None:
    """iso() works in a process that never imports datetime."""
    code = "import sys; from poetctl.timeparse import iso; print(iso(0.25)); print('datetime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), check=True)
    assert out.stdout.split() == ["1970-01-01T00:00:00.250Z", "False"]
