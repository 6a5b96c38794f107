"""The daemon's behaviour with ``workers = 1``, where handlers run inline on the main thread.

Inline mode is a different code path (no worker thread, index written on the
main thread), so the behaviours that depend on scheduling are re-run here
through the same test bodies with ``workers = 1`` in every generated config.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import test_daemon as td
import test_daemon_crash as tc
from daemon_helpers import harness


@pytest.fixture(autouse=True)
def _inline(monkeypatch: pytest.MonkeyPatch) -> None:
    original = harness.write_config

    def write_config(directory: Path, name: str = "poet.toml", **daemon: Any) -> Path:
        daemon["workers"] = 1
        return original(directory, name, **daemon)

    for module in (td, tc):
        monkeypatch.setattr(module, "write_config", write_config)


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """The shared test config, with workers = 1."""
    return td.write_config(tmp_path)


CASES: list[Callable[..., None]] = [
    td.test_once_drains_everything_and_status_counts_it,
    td.test_dead_letter_after_max_attempts_with_backoff_spacing,
    td.test_once_exits_75_while_a_handed_back_event_waits_for_its_retry,
    td.test_poison_event_stalls_only_its_own_key,
    td.test_per_key_order_holds_through_retries,
    td.test_corrupt_files_are_quarantined_with_reasons_and_never_deleted,
    td.test_handler_follow_up_is_linked_deterministic_and_deduplicated_on_replay,
    tc.test_sigkilled_daemons_inflight_events_are_recovered_by_the_next_one,
    tc.test_sigterm_finishes_current_work_and_hands_back_the_rest,
    tc.test_second_sigterm_exits_at_once_with_130_and_nothing_is_lost,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.removeprefix("test_") for c in CASES])
def test_inline_mode(case: Callable[..., None], request: pytest.FixtureRequest) -> None:
    """The same behaviour holds when the single worker runs on the main thread."""
    import inspect

    kwargs = {name: request.getfixturevalue(name) for name in inspect.signature(case).parameters}
    case(**kwargs)
