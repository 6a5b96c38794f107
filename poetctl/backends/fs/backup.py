"""Backup and restore of a filesystem spool: a consistent tar archive (zstd, else gzip) with a manifest.

Consistency while daemons run: events only move forward (pending -> inflight/<owner>
-> processed | dead), so the directories are walked in that order and an event
is taken once, by id, in the most advanced state it was seen in. An event that
moves during the walk is either read where it was, or (its file gone when
opened) found in a later directory, which is listed after the earlier one was
read. Each file is opened through a directory fd without following links
(:class:`SpoolDir`), and its checksum verified before it is archived; a damaged
file is left out and counted (``fsck`` is the tool for it). An in-flight event
is archived as pending: the daemon holding it does not exist in a restored spool.

The archive holds ``events/<state>/<id>.json``, ``state/...`` and ``feedback/...``
files, then ``manifest.json``: per-state counts, the sha256 of every member,
poetctl's version, the time range of the events, and (incremental) the manifest
it follows. Restore reads the whole archive, refuses it if any member's checksum
differs from the manifest (naming the member), and writes into an empty spool.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ...errors import InputMissing, InvalidData, SpoolIOError, UsageError
from .corrupt_names import REASON_SUFFIX
from .layout import SUFFIX, SpoolLayout
from .reader import CorruptEvent, decode_event
from .safefs import SpoolDir

MANIFEST = "manifest.json"
FORMAT = 1
MAX_FILE = 64 << 20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
# Walk order = the direction events move; a later state wins for an id seen twice.
EVENT_STATES = ("pending", "inflight", "processed", "dead")
TREES = ("state", "feedback")


@dataclass
class Snapshot:
    """What one walk of a spool found: archive member -> bytes, with per-event facts."""

    members: dict[str, bytes] = field(default_factory=dict)
    events: dict[str, tuple[str, float]] = field(default_factory=dict)  # id -> (state, timestamp)
    skipped: list[str] = field(default_factory=list)


def _read_events(d: SpoolDir, state: str, snap: Snapshot, max_bytes: int) -> None:
    for name in sorted(d.names()):
        if not name.endswith(SUFFIX) or name.startswith("."):
            continue
        try:
            data = d.read(name, max_bytes)
        except FileNotFoundError:
            continue  # moved on: found in a later state's directory
        except (CorruptEvent, OSError) as exc:
            snap.skipped.append(f"{d.path / name}: {exc}")
            continue
        try:
            ev = decode_event(data, None, where=str(d.path / name), expected_id=name[: -len(SUFFIX)])
        except CorruptEvent as exc:
            snap.skipped.append(str(exc))
            continue
        kept = "pending" if state == "inflight" else state
        prior = snap.events.get(ev.id)
        if prior is not None:
            snap.members.pop(f"events/{prior[0]}/{name}", None)
        snap.events[ev.id] = (kept, ev.timestamp)
        snap.members[f"events/{kept}/{name}"] = data


def _read_tree(d: SpoolDir, snap: Snapshot) -> None:
    """Every regular file below ``d`` (links and other odd entries are left out)."""
    for entry in sorted(d.entries(), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            with d.child(entry.name) as sub:
                _read_tree(sub, snap)
        elif entry.is_file(follow_symlinks=False) and not entry.name.endswith(".tmp"):
            try:
                snap.members[f"{d.rel}/{entry.name}"] = d.read(entry.name, MAX_FILE)
            except FileNotFoundError:
                continue
            except (CorruptEvent, OSError) as exc:
                snap.skipped.append(f"{d.path / entry.name}: {exc}")


def snapshot(layout: SpoolLayout, max_bytes: int) -> Snapshot:
    """Walk the spool once, in the order events move (see the module docstring)."""
    snap = Snapshot()
    for state in EVENT_STATES:
        try:
            with SpoolDir(layout, f"events/{state}") as d:
                if state == "inflight":
                    for owner in sorted(d.names()):
                        if d.is_dir(owner):
                            with d.child(owner) as od:
                                _read_events(od, state, snap, max_bytes)
                else:
                    _read_events(d, state, snap, max_bytes)
        except FileNotFoundError:
            continue
    try:
        with SpoolDir(layout, "events/corrupt") as d:
            for name in sorted(d.names()):
                if d.is_regular(name) and not name.startswith("."):
                    try:
                        snap.members[f"events/corrupt/{name}"] = d.read(name, max_bytes + 65536)
                    except (FileNotFoundError, CorruptEvent, OSError):
                        continue
    except FileNotFoundError:
        pass
    for tree in TREES:
        try:
            with SpoolDir(layout, tree) as d:
                _read_tree(d, snap)
        except FileNotFoundError:
            continue
    return snap


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_backup(
    layout: SpoolLayout, dest: Path, *, max_bytes: int, version: str, since: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Archive the spool into ``dest`` (created exclusively); return the manifest."""
    return write_snapshot(
        snapshot(layout, max_bytes), dest, version=version, since=since, origin={"spool": str(layout.root)}
    )


def write_snapshot(
    snap: Snapshot, dest: Path, *, version: str, since: dict[str, Any] | None, origin: dict[str, Any]
) -> dict[str, Any]:
    """Archive what a walk found (any backend: the NATS backup uses it too); ``origin`` goes into the manifest."""
    base_files: dict[str, str] = dict(since.get("files", {})) if since else {}
    # Incremental: what is new or changed since the base, an event that moved included (its path changed).
    members = {k: v for k, v in snap.members.items() if not since or base_files.get(k) != _sha(v)}
    counts: dict[str, int] = {}
    times = []
    for name in members:
        parts = name.split("/")
        if parts[0] == "events" and parts[1] != "corrupt":
            counts[parts[1]] = counts.get(parts[1], 0) + 1
            times.append(snap.events[parts[2][: -len(SUFFIX)]][1])
        elif parts[0] == "events" and not name.endswith(REASON_SUFFIX):
            counts["corrupt"] = counts.get("corrupt", 0) + 1
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "poetctl_version": version,
        "created_at": time.time(),
        **origin,
        "counts": counts,
        "time_range": [min(times), max(times)] if times else None,
        "skipped": snap.skipped,
        "files": {k: _sha(v) for k, v in sorted(members.items())},
        # An incremental backup names the manifest it follows; restore applies it on top.
        "since": _sha(orjson.dumps(since, option=orjson.OPT_SORT_KEYS)) if since else None,
    }
    _write_archive(dest, members, manifest)
    return manifest


def _compressor(raw: BinaryIO) -> tuple[Any, str]:
    try:
        import zstandard
    except ImportError:  # the optional extra `backup` is not installed: gzip, a standard format too
        return gzip.GzipFile(fileobj=raw, mode="wb", mtime=0), "gzip"
    return zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False), "zstd"


def _write_archive(dest: Path, members: dict[str, bytes], manifest: dict[str, Any]) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(dest, flags, 0o640)
    except FileExistsError:
        raise UsageError(f"{dest} exists; a backup never overwrites a file") from None
    except OSError as exc:
        raise SpoolIOError(f"cannot create {dest}: {exc.strerror}") from None
    ok = False
    try:
        with os.fdopen(fd, "wb", closefd=True) as raw:
            comp, manifest["compression"] = _compressor(raw)
            with tarfile.open(fileobj=comp, mode="w|") as tar:
                for name, data in [*members.items(), (MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))]:
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.mtime = len(data), 0o640, int(manifest["created_at"])
                    tar.addfile(info, io.BytesIO(data))
            comp.close()
            raw.flush()
            os.fsync(raw.fileno())
        ok = True
    finally:
        if not ok:
            try:
                os.unlink(dest)
            except OSError:
                pass


# -- restore ----------------------------------------------------------------------------------
def read_archive(src: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Manifest and members of an archive, every member's checksum verified against the manifest.

    Raises :class:`InvalidData` (65) naming the member whose checksum differs, which is
    missing, or which the manifest does not list; :class:`InputMissing` (66) if absent.
    """
    try:
        with open(src, "rb") as fh:
            blob = fh.read()
    except FileNotFoundError:
        raise InputMissing(f"no such backup {src}") from None
    except OSError as exc:
        raise InputMissing(f"cannot read backup {src}: {exc.strerror}") from None
    try:
        if blob.startswith(ZSTD_MAGIC):
            import zstandard

            tar_bytes = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()
        elif blob.startswith(GZIP_MAGIC):
            tar_bytes = gzip.decompress(blob)
        else:
            raise InvalidData("not a poetctl backup (expected a zstd or gzip compressed tar)", where=str(src))
        members: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            for info in tar:
                if not info.isfile() or info.name in members:
                    raise InvalidData(f"unexpected archive member {info.name!r}", where=str(src))
                f = tar.extractfile(info)
                members[info.name] = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError, ImportError) as exc:
        raise InvalidData(f"damaged archive: {exc}", where=str(src)) from None
    except Exception as exc:  # zstandard.ZstdError and the like
        raise InvalidData(f"damaged archive: {type(exc).__name__}: {exc}", where=str(src)) from None
    raw_manifest = members.pop(MANIFEST, None)
    if raw_manifest is None:
        raise InvalidData("no manifest.json in the archive", where=str(src))
    manifest = orjson.loads(raw_manifest)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise InvalidData("manifest.json has no 'files' table", where=str(src))
    for name, data in members.items():
        if name not in files:
            raise InvalidData(f"{name} is in the archive but not in its manifest; refusing it", where=str(src))
        if files[name] != _sha(data):
            raise InvalidData(f"{name}: checksum does not match the manifest (tampered or damaged)", where=str(src))
    for name in files:
        if name not in members:
            raise InvalidData(f"{name} is in the manifest but missing from the archive", where=str(src))
    for name in members:
        _check_member_name(name, src)
    return manifest, members


def _check_member_name(name: str, src: Path) -> None:
    """Only the layout's own relative paths: nothing from an archive becomes a path unchecked."""
    parts = name.split("/")
    ok = (
        len(parts) >= 2
        and all(p and p not in (".", "..") and not p.startswith(".") for p in parts)
        and (
            (parts[0] == "events" and len(parts) == 3 and parts[1] in ("pending", "processed", "dead", "corrupt"))
            or parts[0] in TREES
            or (parts[0] == "kv" and len(parts) == 3 and parts[1] == "functions")  # a NATS backup's state
        )
    )
    if not ok:
        raise InvalidData(f"archive member {name!r} is not a spool path; refusing the archive", where=str(src))


def merged(archives: list[tuple[dict[str, Any], dict[str, bytes]]]) -> dict[str, bytes]:
    """The members of a full backup and its incrementals, later ones winning, each event once."""
    out: dict[str, bytes] = {}
    where: dict[str, str] = {}  # event file name -> member holding it
    for _manifest, members in archives:
        for name, data in members.items():
            parts = name.split("/")
            if parts[0] == "events":
                prior = where.get(parts[2])
                if prior is not None and prior != name:
                    out.pop(prior, None)
                where[parts[2]] = name
            out[name] = data
    return out


def restore_into(layout: SpoolLayout, members: dict[str, bytes], until: float | None) -> dict[str, int]:
    """Write ``members`` into the empty spool ``layout``; events after ``until`` are left out. Counts per state."""
    if layout.root.exists() and any(_has_files(layout.root)):
        raise UsageError(f"{layout.root} is not empty; restore only into a new or empty spool")
    layout.init()
    counts: dict[str, int] = {}
    kept_corrupt: set[str] = set()
    by_dir: dict[str, list[tuple[str, bytes]]] = {}
    for name, data in sorted(members.items()):
        parts = name.split("/")
        if parts[0] == "events" and parts[1] != "corrupt":
            if until is not None and orjson.loads(data).get("timestamp", 0) > until:
                continue
            counts[parts[1]] = counts.get(parts[1], 0) + 1
        elif parts[0] == "events":
            kept_corrupt.add(parts[2])
        elif parts[0] == "kv":
            counts["skipped_nats_state"] = counts.get("skipped_nats_state", 0) + 1
            continue  # NATS KV function state: the spool keeps state/ as files; `state rebuild` makes it
        elif until is not None:
            continue  # state/ and feedback/ describe the end of the backup, not TIME: rebuild them
        rel, _, base = name.rpartition("/")
        by_dir.setdefault(rel, []).append((base, data))
    for rel, files in by_dir.items():
        _make_dirs(layout, rel)
        with SpoolDir(layout, rel) as target:
            for base, data in files:
                target.create(base, data)
            target.fsync()
    counts["corrupt"] = sum(1 for n in kept_corrupt if not n.endswith(REASON_SUFFIX))
    from .fsck_repair import rebuild_index

    with SpoolDir(layout, "events/processed") as p, SpoolDir(layout, "events/dead") as dd:
        rebuild_index(layout, p, dd)
    return counts


def _make_dirs(layout: SpoolLayout, rel: str) -> None:
    path = layout.root
    for part in rel.split("/"):
        path = path / part
        try:
            os.mkdir(path, 0o750)
        except FileExistsError:
            if path.is_symlink() or not path.is_dir():
                raise SpoolIOError(f"{path} is a symlink or not a directory") from None


def _has_files(root: Path) -> Iterator[str]:
    for _dirpath, _dirs, files in os.walk(root):
        yield from files
