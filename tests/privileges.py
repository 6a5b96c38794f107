"""Running the CLI without the power to ignore file modes, so permission tests mean something as root.

The tests run as root here, and root ignores file modes. An unprivileged
user (``setuid(65534)``) cannot run the interpreter when it lives under a
0700 home (``/root/.pyenv``), so instead the child keeps uid 0 but loses the
capabilities that bypass modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH,
CAP_FOWNER) from its bounding set before ``exec``: root then gets exactly
the owner's permission bits, like any user on their own files. As a
non-root user, plain ``chmod`` already does the job and nothing is dropped.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from conftest import CLI_TIMEOUT, clean_env, cli_argv

PR_CAPBSET_DROP = 24
CAPS = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def drop_caps() -> None:
    """preexec for root: lose the capabilities that bypass file modes (the one copy of this; see above)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in CAPS:
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def can_drop() -> bool:
    """True when modes can be made to bind (not root, or root able to drop capabilities)."""
    if os.geteuid() != 0:
        return True
    probe = subprocess.run(["sh", "-c", "exit 0"], preexec_fn=drop_caps, capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


def run_bound(
    cwd: Path, *args: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``poetctl ARGS`` with file modes binding (see the module docstring); text stdout/stderr."""
    return subprocess.run(
        [os.fspath(a) for a in cli_argv(*args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=clean_env(env),
        cwd=cwd,
        timeout=CLI_TIMEOUT,
        check=False,
        preexec_fn=drop_caps if os.geteuid() == 0 else None,
    )


def make_readonly(root: Path) -> None:
    """Take write permission off every directory and file under ``root`` (links untouched)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for n in filenames:
            p = Path(dirpath) / n
            if not p.is_symlink():
                p.chmod(p.stat().st_mode & ~0o222)
        Path(dirpath).chmod(Path(dirpath).stat().st_mode & ~0o222)


def make_writable(root: Path) -> None:
    """Undo :func:`make_readonly` (so pytest can remove the tree)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        Path(dirpath).chmod(Path(dirpath).stat().st_mode | 0o700)
        for n in filenames:
            p = Path(dirpath) / n
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | 0o600)
