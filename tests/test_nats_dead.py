"""poetctl dead list|show|retry|purge in nats mode, on a real nats-server: the DLQ stream behind the same CLI."""

from __future__ import annotations

import json
from pathlib import Path

from tests.nats_cli_helpers import cli, project, server
from tests.natsserver import NatsServer

__all__ = ["project", "server"]  # the fixtures, imported for pytest

HANDLERS = """
import json, os
def register(router):
    log = os.environ["POET_TEST_LOG"]
    def seen(event):
        broken = os.path.exists(os.environ["POET_TEST_BROKEN"])
        with open(log, "a") as fh:
            fh.write(json.dumps([event.id, broken]) + "\\n")
        if broken and event.payload.get("status") == "unhealthy":
            raise ValueError("poison " + event.id)
    router.subscribe("system.health", seen, name="seen")
"""


def _emit(project: Path, url: str, status: str, service: str = "s") -> str:
    r = cli(
        ["emit", "--mode", "nats", "system.health", json.dumps({"service": service, "status": status})], project, url
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _daemon(project: Path, url: str) -> int:
    env = {"POET_TEST_LOG": str(project / "seen.log"), "POET_TEST_BROKEN": str(project / "broken")}
    d = cli(
        ["daemon", "--mode", "nats", "--once", "--handlers", str(project / "h.py"), "--workers", "1"],
        project,
        url,
        **env,
    )
    return d.returncode


def _seen(project: Path) -> list[tuple[str, bool]]:
    return [tuple(json.loads(x)) for x in (project / "seen.log").read_text().splitlines()]  # type: ignore[misc]


def _dead(project: Path, url: str, *args: str) -> tuple[int, str, str]:
    r = cli(["dead", *args, "--mode", "nats"], project, url)
    return r.returncode, r.stdout, r.stderr


def test_poison_is_dead_after_max_attempts_then_retry_processes_it(project: Path, server: NatsServer) -> None:
    """A poison event is a dead letter after exactly max attempts with its error; dead retry (twice, within the
    duplicate window) puts it back with a fresh record and, with the handler fixed, it is processed once."""
    url = server.url
    assert cli(["nats", "setup"], project, url).returncode == 0
    (project / "h.py").write_text(HANDLERS)
    (project / "broken").write_text("")
    poison = _emit(project, url, "unhealthy")
    assert _daemon(project, url) == 1  # dead-lettered
    assert [s for s in _seen(project) if s[0] == poison] == [(poison, True)] * 3

    code, out, err = _dead(project, url, "list")
    assert code == 0, err
    [row] = [json.loads(x) for x in out.splitlines()]
    assert row["id"] == poison and row["type"] == "system.health" and row["reason"] == "attempts_exhausted"
    assert row["attempts"] == 3 and row["error"] == f"ValueError: poison {poison}" and row["handler"] == "seen"
    assert isinstance(row["dead_at"], float)
    code, out, err = _dead(project, url, "show", poison)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["event"]["id"] == poison and doc["error"]["attempts"] == 3 and "ValueError" in doc["error"]["traceback"]

    # Retry while still broken: it must be handled again (not dropped as a duplicate of the first publish),
    # with fresh attempts: three more, then dead again.
    code, out, err = _dead(project, url, "retry", "--id", poison)
    assert code == 0 and out.split() == [poison], err
    assert _dead(project, url, "list")[1] == ""
    assert _daemon(project, url) == 1
    assert [s for s in _seen(project) if s[0] == poison] == [(poison, True)] * 6

    (project / "broken").unlink()
    code, out, err = _dead(project, url, "retry", "--all")
    assert code == 0 and out.split() == [poison], err
    assert _daemon(project, url) == 0
    assert _seen(project)[-1] == (poison, False) and len(_seen(project)) == 7

    from poetctl.backends.nats.settings import NatsSettings
    from poetctl.backends.nats.transport import NatsTransport
    from poetctl.transport import Query, State

    t = NatsTransport(NatsSettings(servers=(url,), partitions=4))
    try:
        assert t.state_of(poison) == State.PROCESSED
        [stored] = list(t.select(Query(ids=[poison])))  # one copy in the stream, not one per retry
        mark = stored.event.metadata["replayed"] if stored.event else {}
        assert mark["from"] == "dead" and mark["count"] == 2 and mark["error"]["attempts"] == 3
    finally:
        t.close()
    assert _dead(project, url, "list")[1] == ""
    from tests.test_nats_keysubject import assert_key_subjects

    assert assert_key_subjects(url) >= 1  # emit's and dead retry's copies are on key subjects


def test_list_show_purge_selectors_and_exit_codes(project: Path, server: NatsServer) -> None:
    """Empty queue: list exit 0; unmatched selectors 1; show of a processed id 1 naming its state; retry/purge
    need selectors (2); purge --dry-run deletes nothing; purge deletes the letter and its state."""
    url = server.url
    assert cli(["nats", "setup"], project, url).returncode == 0
    (project / "h.py").write_text(HANDLERS)
    assert _dead(project, url, "list")[:2] == (0, "")
    (project / "broken").write_text("")
    good = _emit(project, url, "healthy")
    a = _emit(project, url, "unhealthy", "a")
    b = _emit(project, url, "unhealthy", "b")
    assert _daemon(project, url) == 1
    code, out, _ = _dead(project, url, "list", "-o", "jsonl")
    assert code == 0 and {json.loads(x)["id"] for x in out.splitlines()} == {a, b}
    code, _, err = _dead(project, url, "list", "--topic", "poet/nothing/here")
    assert code == 1 and "no dead letter matched" in err
    code, _, err = _dead(project, url, "show", good)
    assert code == 1 and f"no dead event {good}: it is processed" in err
    code, _, err = _dead(project, url, "show", "0194f0c2-0000-7000-8000-000000000000")
    assert code == 1 and "no such event" in err
    for verb in ("retry", "purge"):
        code, _, err = _dead(project, url, verb)
        assert code == 2 and "needs a selector" in err
    code, out, _ = _dead(project, url, "purge", "--id", a, "--dry-run")
    assert code == 0 and out.split() == [a]
    code, out, _ = _dead(project, url, "purge", "--id", a, "--id", good)
    assert code == 0 and out.split() == [a]
    code, out, _ = _dead(project, url, "list", "-o", "jsonl")
    assert [json.loads(x)["id"] for x in out.splitlines()] == [b]
    code, _, err = _dead(project, url, "show", a)
    assert code == 1 and "no such event" in err
    code, _, err = _dead(project, url, "purge", "--id", a)
    assert code == 1 and "nothing was purged" in err
