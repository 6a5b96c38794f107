"""The backup archive, written member by member and read back verified (the format of both backends).

A tar stream compressed with zstd (gzip without the ``backup`` extra), then
``manifest.json`` as the last member: per-state counts, the sha256 of every
member, poetctl's version, the events' time range, and (incremental) the
manifest it follows. :class:`ArchiveWriter` writes each member as it comes,
so a backup holds one member's bytes at a time, plus, per member, its name
and checksum (the manifest's table); never the archive or all the events.

Members: ``events/<state>/<id>.json`` (the stored bytes), beside a dead
event its ``events/dead/<id>.error`` (the dead-letter record, the spool's
``dead/<id>.error``: JSON from :func:`~poetctl.transport.dead_letter_info`),
``events/corrupt/<name>`` with its ``.reason``, ``state/...``,
``feedback/...`` and ``kv/functions/<key>`` (a NATS backup's function state).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import orjson

from ...errors import InputMissing, InvalidData, SpoolIOError, UsageError
from .corrupt_names import REASON_SUFFIX
from .layout import SUFFIX

MANIFEST = "manifest.json"
FORMAT = 1
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
ERROR = ".error"  # a dead event's record, beside its .json
TREES = ("state", "feedback")
STATES = ("pending", "processed", "dead", "corrupt")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_event(name: str) -> bool:
    """``events/<state>/<id>.json`` of a pending, processed or dead event (not corrupt input, not a record)."""
    parts = name.split("/")
    return parts[0] == "events" and parts[1] != "corrupt" and name.endswith(SUFFIX)


def _compressor(raw: BinaryIO) -> tuple[Any, str]:
    try:
        import zstandard
    except ImportError:  # the optional extra `backup` is not installed: gzip, a standard format too
        return gzip.GzipFile(fileobj=raw, mode="wb", mtime=0), "gzip"
    return zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False), "zstd"


class ArchiveWriter:
    """``dest`` (created exclusively, removed again unless :meth:`finish` completes), written as members come.

    With ``since`` (a previous manifest), a member whose name and checksum it
    already lists is left out: an incremental holds what is new or changed,
    an event that moved included (its path changed).
    """

    def __init__(self, dest: Path, since: dict[str, Any] | None = None) -> None:
        self.dest = dest
        self.since = since
        self.base: dict[str, str] = dict(since.get("files", {})) if since else {}
        self.created_at = time.time()
        self.files: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self.skipped: list[str] = []
        self._range: tuple[float, float] | None = None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(dest, flags, 0o640)
        except FileExistsError:
            raise UsageError(f"{dest} exists; a backup never overwrites a file") from None
        except OSError as exc:
            raise SpoolIOError(f"cannot create {dest}: {exc.strerror}") from None
        self._raw = os.fdopen(fd, "wb", closefd=True)
        try:
            self._comp, self.compression = _compressor(self._raw)
            self._tar = tarfile.open(fileobj=self._comp, mode="w|")  # noqa: SIM115 - closed by finish() or abort()
        except BaseException:
            self._raw.close()
            os.unlink(dest)
            raise
        self._done = False

    def add(self, name: str, data: bytes, timestamp: float | None = None) -> bool:
        """Archive one member (``timestamp``: an event's, for the time range); False if the base holds it already."""
        digest = sha(data)
        if name in self.files or self.base.get(name) == digest:
            return False
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o640, int(self.created_at)
        self._tar.addfile(info, io.BytesIO(data))
        self.files[name] = digest
        parts = name.split("/")
        if is_event(name):
            self.counts[parts[1]] = self.counts.get(parts[1], 0) + 1
            if timestamp is not None:
                lo, hi = self._range or (timestamp, timestamp)
                self._range = (min(lo, timestamp), max(hi, timestamp))
        elif parts[0] == "events" and parts[1] == "corrupt" and not name.endswith(REASON_SUFFIX):
            self.counts["corrupt"] = self.counts.get("corrupt", 0) + 1
        return True

    def finish(self, version: str, origin: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest (the last member), flush and fsync; the manifest."""
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "poetctl_version": version,
            "created_at": self.created_at,
            **origin,
            "counts": self.counts,
            "time_range": list(self._range) if self._range else None,
            "skipped": self.skipped,
            "files": dict(sorted(self.files.items())),
            # An incremental backup names the manifest it follows; restore applies it on top.
            "since": sha(orjson.dumps(self.since, option=orjson.OPT_SORT_KEYS)) if self.since else None,
            "compression": self.compression,
        }
        data = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mode, info.mtime = len(data), 0o640, int(self.created_at)
        self._tar.addfile(info, io.BytesIO(data))
        self._tar.close()
        self._comp.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        self._done = True
        return manifest

    def abort(self) -> None:
        """Close and remove the half-written archive."""
        for close in (self._tar.close, self._comp.close, self._raw.close):
            try:
                close()
            except Exception:  # already broken: it is removed anyway
                pass
        try:
            os.unlink(self.dest)
        except OSError:
            pass

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self._done:
            self.abort()


# -- reading --------------------------------------------------------------------------------------
def _open_stream(fh: BinaryIO, src: Path) -> Any:
    head = fh.read(4)
    fh.seek(0)
    if head.startswith(ZSTD_MAGIC):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(fh)
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=fh, mode="rb")
    raise InvalidData("not a poetctl backup (expected a zstd or gzip compressed tar)", where=str(src))


def _members(src: Path) -> Iterator[tuple[str, bytes]]:
    """Each member of the archive ``src`` as it is decompressed (one member's bytes at a time).

    Raises :class:`InvalidData` (65) for a damaged archive or an odd member, :class:`InputMissing` (66).
    """
    try:
        fh = open(src, "rb")  # noqa: SIM115 - closed below, after the stream
    except FileNotFoundError:
        raise InputMissing(f"no such backup {src}") from None
    except OSError as exc:
        raise InputMissing(f"cannot read backup {src}: {exc.strerror}") from None
    seen: set[str] = set()
    try:
        with fh, tarfile.open(fileobj=_open_stream(fh, src), mode="r|") as tar:
            for info in tar:
                if not info.isfile() or info.name in seen:
                    raise InvalidData(f"unexpected archive member {info.name!r}", where=str(src))
                seen.add(info.name)
                f = tar.extractfile(info)
                yield info.name, f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError, ImportError) as exc:
        raise InvalidData(f"damaged archive: {exc}", where=str(src)) from None
    except InvalidData:
        raise
    except Exception as exc:  # zstandard.ZstdError and the like
        raise InvalidData(f"damaged archive: {type(exc).__name__}: {exc}", where=str(src)) from None


def _verified(src: Path, digests: dict[str, str], raw_manifest: bytes | None) -> dict[str, Any]:
    """The manifest, once every member's digest (``digests``) is checked against it."""
    if raw_manifest is None:
        raise InvalidData("no manifest.json in the archive", where=str(src))
    manifest = orjson.loads(raw_manifest)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise InvalidData("manifest.json has no 'files' table", where=str(src))
    for name, digest in digests.items():
        if name not in files:
            raise InvalidData(f"{name} is in the archive but not in its manifest; refusing it", where=str(src))
        if files[name] != digest:
            raise InvalidData(f"{name}: checksum does not match the manifest (tampered or damaged)", where=str(src))
    for name in files:
        if name not in digests:
            raise InvalidData(f"{name} is in the manifest but missing from the archive", where=str(src))
    for name in digests:
        _check_member_name(name, src)
    return manifest  # type: ignore[no-any-return]


def read_archive(src: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Manifest and members of an archive, every member's checksum verified against the manifest.

    Decompressed as a stream (the compressed and the uncompressed archive are
    never held whole beside the members). Raises :class:`InvalidData` (65)
    naming the member whose checksum differs, which is missing, or which the
    manifest does not list; :class:`InputMissing` (66) if absent.
    """
    members = dict(_members(src))
    raw_manifest = members.pop(MANIFEST, None)
    manifest = _verified(src, {name: sha(data) for name, data in members.items()}, raw_manifest)
    return manifest, members


class Archives:
    """A full backup and its incrementals, read twice: verified whole first, then streamed member by member.

    The first pass checks every member against its manifest (nothing is
    written before it ends) and keeps per member its checksum, per event its
    timestamp; :meth:`members` reads the archives again and yields the
    members kept (later archives win, each event once: see :func:`_winners`),
    each checked again (an archive that changed in between is refused). Memory: per member its name and
    checksum, never the members.
    """

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.digests: list[dict[str, str]] = []
        self.manifests: list[dict[str, Any]] = []
        self.stamps: dict[tuple[int, str], float] = {}
        for i, src in enumerate(paths):
            digests: dict[str, str] = {}
            raw_manifest = None
            for name, data in _members(src):
                if name == MANIFEST:
                    raw_manifest = data
                    continue
                digests[name] = sha(data)
                if is_event(name):
                    try:
                        self.stamps[(i, name)] = float(orjson.loads(data).get("timestamp", 0))
                    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                        self.stamps[(i, name)] = 0.0  # not an event after all: the restore names it
            self.manifests.append(_verified(src, digests, raw_manifest))
            self.digests.append(digests)
        self.winner: dict[str, int] = _winners(self.digests)

    @property
    def names(self) -> set[str]:
        return set(self.winner)

    def timestamp(self, name: str) -> float:
        return self.stamps.get((self.winner.get(name, -1), name), 0.0)

    def members(self) -> Iterator[tuple[str, bytes]]:
        for i, src in enumerate(self.paths):
            for name, data in _members(src):
                if self.winner.get(name) != i:
                    continue
                if sha(data) != self.digests[i][name]:
                    raise InvalidData(f"{name}: changed since it was verified; refusing it", where=str(src))
                yield name, data


def _winners(digests: list[dict[str, str]]) -> dict[str, int]:
    """Member name -> the archive whose copy is kept: a full backup, then its incrementals, later ones winning.

    An event that moved drops its earlier copy, and its dead-letter record
    unless it is (still) dead; a record that changed alone replaces the old one.
    """
    out: dict[str, int] = {}
    where: dict[str, str] = {}
    for i, names in enumerate(digests):
        for name in names:
            if is_event(name):
                eid = event_id(name)
                prior = where.get(eid)
                if prior is not None and prior != name:
                    out.pop(prior, None)
                    if name.split("/")[1] != "dead":
                        out.pop(f"events/dead/{eid}{ERROR}", None)
                where[eid] = name
            out[name] = i
    return out


def _check_member_name(name: str, src: Path) -> None:
    """Only the layout's own relative paths: nothing from an archive becomes a path unchecked."""
    parts = name.split("/")
    ok = (
        len(parts) >= 2
        and all(p and p not in (".", "..") and not p.startswith(".") for p in parts)
        and (
            (parts[0] == "events" and len(parts) == 3 and parts[1] in STATES)
            or parts[0] in TREES
            or (parts[0] == "kv" and len(parts) == 3 and parts[1] == "functions")  # a NATS backup's state
        )
        and (parts[0] != "events" or parts[1] == "corrupt" or parts[2].endswith(SUFFIX) or _is_record(parts))
    )
    if not ok:
        raise InvalidData(f"archive member {name!r} is not a spool path; refusing the archive", where=str(src))


def _is_record(parts: list[str]) -> bool:
    return parts[1] == "dead" and parts[2].endswith(ERROR)


def event_id(name: str) -> str:
    """The id in ``events/<state>/<id>.json`` or ``events/dead/<id>.error``."""
    base = name.rsplit("/", 1)[-1]
    return base[: -len(SUFFIX)] if base.endswith(SUFFIX) else base[: -len(ERROR)]


__all__ = ["MANIFEST", "ArchiveWriter", "Archives", "event_id", "is_event", "read_archive", "sha"]
