"""A real ``poetctl serve`` process on a free 127.0.0.1 port with a temp spool, for the serve tests.

The server is started with ``--port 0``; the harness reads the address from
the ``listening on`` line it prints, keeps every stderr line (to check that no
secret is ever logged), and stops the process with SIGTERM (SIGKILL if it
does not go) when the test ends.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conftest import clean_env, cli_argv

from poetctl.spool import SpoolLayout

START_TIMEOUT = 60.0
TOKENS = {"POET_TEST_TOKEN_A": "tok-a-0123456789abcdef", "POET_TEST_TOKEN_B": "tok-b-fedcba9876543210"}
FEEDBACK_SECRET = "fb-secret-5f2c0c7e4d"
PD_SECRETS = {"POET_TEST_PD_NEW": "pd-new-8c1d1f0b", "POET_TEST_PD_OLD": "pd-old-2a9e44c7"}


class Server:
    """One running ``poetctl serve``."""

    def __init__(
        self,
        root: Path,
        serve_table: str = "",
        env: Mapping[str, str] | None = None,
        top: str = "",
        cwd: Path | None = None,
    ) -> None:
        self.root = root
        self.spool = root / "spool"
        SpoolLayout(self.spool).init()
        cfg = root / "poet.toml"
        cfg.write_text(f'storage_path = "spool"\n{top}\n[serve]\n{serve_table}', encoding="utf-8")
        extra = {**TOKENS, **PD_SECRETS, "POET_TEST_FEEDBACK": FEEDBACK_SECRET, **(env or {})}
        self.proc = subprocess.Popen(
            cli_argv("--config", cfg, "serve", "--port", "0"),
            cwd=cwd or root,
            env=clean_env(extra),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(START_TIMEOUT) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("poetctl serve did not start:\n" + "".join(self.lines))
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", "".join(self.lines))
        assert m, self.lines
        self.url = m.group(1)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "listening on" in line:
                self._ready.set()
        self._ready.set()  # the process ended: let the waiter see it

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        return self.proc.returncode


DEFAULT_TABLE = (
    'token = ["env:POET_TEST_TOKEN_A", "env:POET_TEST_TOKEN_B"]\n'
    'feedback_secret = "env:POET_TEST_FEEDBACK"\n'
    'pagerduty_secret = ["env:POET_TEST_PD_NEW", "env:POET_TEST_PD_OLD"]\n'
)


def spool_events(spool: Path, type_: str | None = None) -> list[dict[str, Any]]:
    """Every event file in pending/inflight/processed/dead (optionally of one type), parsed, each id once.

    A running daemon moves files between the states while they are walked: a walk during which a
    listed file vanished is taken again, so an event is neither missed nor read twice.
    """
    while True:
        out: dict[str, dict[str, Any]] = {}
        try:
            for state in ("pending", "inflight", "processed", "dead"):
                for dirpath, _dirs, names in os.walk(spool / "events" / state):
                    for n in names:
                        if n.endswith(".json"):
                            d = json.loads((Path(dirpath) / n).read_text(encoding="utf-8"))
                            if type_ is None or d["type"] == type_:
                                out.setdefault(d["id"], d)
        except FileNotFoundError:
            continue
        return list(out.values())
