"""`poetctl nats setup` waits out a cluster that is still forming.

A setup run just after the servers start (as `make demo-cluster` does) can meet JetStream's "no
suitable peers for placement, peer offline" (10005): the change is retried until the peers are
there, with one line on stderr saying so. A real cluster gives that answer only in a short window
after start (CI met it once), so the retry policy is checked here with nats-py's own error class.
"""

from __future__ import annotations

import pytest


def _api_error(code: int, description: str) -> Exception:
    from nats.js.errors import APIError

    err = APIError.__new__(APIError)
    err.code, err.err_code, err.description, err.stream, err.seq = 400, code, description, None, None
    return err


def test_a_forming_cluster_answer_is_retried_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """10005 (no suitable peers) is retried until the change goes through; stderr says so once."""
    import asyncio

    from poetctl.backends.nats.setup import _patient

    answers: list[Exception | None] = [
        _api_error(10005, "no suitable peers for placement, peer offline"),
        _api_error(10005, "no suitable peers for placement, peer offline"),
        None,
    ]

    async def op() -> str:
        a = answers.pop(0)
        if a is not None:
            raise a
        return "made"

    assert asyncio.run(_patient(op, "+ stream POET", patience=30)) == "made"
    err = capsys.readouterr().err.splitlines()
    assert err == ["nats setup: + stream POET: no suitable peers for placement, peer offline; waiting for the cluster"]


def test_other_refusals_and_a_cluster_that_never_forms_fail_at_once_or_in_time() -> None:
    """A refusal that is not about forming (e.g. 10058) is raised at once; 10005 past the patience is raised."""
    import asyncio

    from nats.js.errors import APIError

    from poetctl.backends.nats.setup import _patient

    calls = [0]

    async def refused() -> None:
        calls[0] += 1
        raise _api_error(10058, "stream name already in use with a different configuration")

    with pytest.raises(APIError):
        asyncio.run(_patient(refused, "+ stream POET", patience=30))
    assert calls[0] == 1

    async def forming() -> None:
        calls[0] += 1
        raise _api_error(10005, "no suitable peers for placement")

    with pytest.raises(APIError):
        asyncio.run(_patient(forming, "+ stream POET", patience=2.0))  # room for retries on a slow machine
    assert calls[0] > 2
