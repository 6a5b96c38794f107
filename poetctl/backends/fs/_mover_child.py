"""The completion mover's child process (see :mod:`poetctl.backends.fs.mover`).

Run as ``python -I -S _mover_child.py <inflight dir> <processed dir>
[--pending DIR]``: it imports only the standard library, so it starts in
milliseconds and never touches the parent's state. Standard input carries one
command per line:

* ``C <name>``: claim ``<pending dir>/<name>`` for the parent: rename it into
  the in-flight directory (the parent has read and verified it and holds its
  key's bucket lock). ``K <token>`` ends a batch of claims and answers
  ``K <token> <results>`` on standard output, one ``1`` (claimed) or ``0``
  (gone: another daemon took it) per claim, in order.

* ``D <name>``: file ``<inflight dir>/<name>`` as processed: hard-link it to
  ``<processed dir>/<name>``, then unlink the in-flight name. ``link`` and
  ``unlink`` do not take the filesystem-wide rename lock that a
  cross-directory ``rename`` takes, so this runs beside the parent's claim
  renames on another core. A name already gone from in-flight is skipped (it
  was filed before); an existing processed name that is the same file (a
  crash between link and unlink) only loses the in-flight name; a different
  file there is replaced by ``rename``, as the daemon itself would do.
* ``S <seq>``: fsync the processed directory, then answer ``S <seq>`` on
  standard output: every command before it has been carried out.

End of input (the parent closed the pipe, exited or was killed) means: carry
out what was received, fsync, exit 0. Names are event file names the parent
verified (``<event id>.json``); anything else is refused and reported on
standard error. Any other error is reported there too and ends the child at
once with status 1, before it acknowledges anything more; the parent then
files the unacknowledged names itself.
"""

from __future__ import annotations

import os
import signal
import sys


def bad_name(name: bytes) -> bool:
    """Anything but one plain ``*.json`` path component (names are used relative to a directory fd)."""
    return b"/" in name or name[:1] in (b".", b"") or not name.endswith(b".json") or len(name) > 255


def file_one(name: bytes, src: int, dst: int) -> None:
    """Move ``name`` from the in-flight directory (fd ``src``) to processed (fd ``dst``)."""
    try:
        os.link(name, name, src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)
    except FileNotFoundError:
        return  # filed already (or handed back): nothing to do
    except FileExistsError:
        a = os.stat(name, dir_fd=src, follow_symlinks=False)
        b = os.stat(name, dir_fd=dst, follow_symlinks=False)
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
            return
    except PermissionError:
        # fs.protected_hardlinks refuses links to files of another user: rename instead.
        os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
        return
    try:
        os.unlink(name, dir_fd=src)
    except FileNotFoundError:
        pass


def main(argv: list[str]) -> int:
    # Ctrl-C and a service manager's SIGTERM reach the whole process group; the
    # child must not die of them with work queued: it ends at end of input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    src = os.open(argv[1], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    dst = os.open(argv[2], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    opts = dict(zip(argv[3::2], argv[4::2], strict=True))
    pend = os.open(opts["--pending"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if "--pending" in opts else -1
    claimed = bytearray()
    rest = b""
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            op, arg = line[:2], line[2:]
            try:
                if op == b"D ":
                    if bad_name(arg):
                        raise ValueError(f"refusing name {arg!r}")
                    file_one(arg, src, dst)
                elif op == b"C ":
                    if bad_name(arg) or pend < 0:
                        raise ValueError(f"refusing claim of {arg!r}")
                    try:
                        os.rename(arg, arg, src_dir_fd=pend, dst_dir_fd=src)
                        claimed.append(49)  # "1"
                    except FileNotFoundError:
                        claimed.append(48)  # "0": taken by another daemon, or gone
                elif op == b"K ":
                    os.write(1, b"K " + arg + b" " + bytes(claimed) + b"\n")
                    claimed.clear()
                elif op == b"S ":
                    os.fsync(dst)
                    os.write(1, b"S " + arg + b"\n")
                else:
                    raise ValueError(f"unknown command {line[:80]!r}")
            except (OSError, ValueError) as exc:
                sys.stderr.write(f"poetctl mover: {exc}\n")
                return 1
    try:
        os.fsync(dst)
    except OSError as exc:
        sys.stderr.write(f"poetctl mover: fsync failed: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
