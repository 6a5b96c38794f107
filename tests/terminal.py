"""Running the CLI with its stdout on a real terminal (a pseudo-terminal), to test what a TTY gets."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
import threading
import tty
from collections.abc import Mapping
from pathlib import Path

from conftest import CLI_TIMEOUT, clean_env, cli_argv


def run_on_tty(
    cwd: Path, *args: str | os.PathLike[str], env: Mapping[str, str] | None = None, columns: int = 200
) -> tuple[int, str, str]:
    """Run ``poetctl ARGS`` with stdout on a pseudo-terminal; (exit code, terminal output, stderr).

    The terminal is put in raw mode, so the output is the bytes the program
    wrote (no CR added before each LF). ``TERM=xterm-256color``: a colour
    terminal, so any style the program emits shows up as an escape sequence.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, columns, 0, 0))
    tty.setraw(slave)
    full_env = clean_env({"TERM": "xterm-256color", "COLUMNS": str(columns), **(env or {})})
    for name in ("FORCE_COLOR", "PY_COLORS", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        if name not in (env or {}):
            full_env.pop(name, None)
    try:
        p = subprocess.Popen(
            [str(a) for a in cli_argv(*args)],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=cwd,
        )
    finally:
        os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        _, err = p.communicate(timeout=CLI_TIMEOUT)
        reader.join(CLI_TIMEOUT)
    finally:
        os.close(master)
    return p.returncode, b"".join(chunks).decode("utf-8", "replace"), err.decode("utf-8", "replace")
