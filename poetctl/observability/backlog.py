"""Gauges read from the spool when scraped: counts per state, lag, daemons, disk, last fsck.

One source, two outputs: the daemon's ``/metrics`` (through
:class:`~.metrics.DaemonMetrics`'s backlog provider, cached) and
``poetctl status --prometheus FILE`` (a node-exporter textfile). Both take
the ``status`` document (:func:`poetctl.ops.status.collect`: pending and
dead listings, processed from the index) plus :func:`extras`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GAUGES: dict[str, str] = {
    "poetctl_spool_events": "Events in the spool, by state.",
    "poetctl_oldest_pending_age_seconds": "Age of the oldest pending event (consumer lag); 0 when none.",
    "poetctl_daemons": "Daemons with a heartbeat, by status (alive, stale).",
    "poetctl_last_heartbeat_timestamp_seconds": "Newest heartbeat of a live daemon (Unix time); absent when none.",
    "poetctl_filesystem_avail_bytes": "Bytes available to the daemon on the spool's filesystem.",
    "poetctl_filesystem_size_bytes": "Size of the spool's filesystem in bytes.",
    "poetctl_fsck_loss_events": "Problems meaning lost or unreadable events found by the last fsck.",
    "poetctl_fsck_last_run_timestamp_seconds": "When the last fsck ran (Unix time).",
    "poetctl_circuit_breaker_state": "Outbound integration circuit breakers: 1 for the current state.",
    "poetctl_status_timestamp_seconds": "When these figures were read (Unix time).",
    "poetctl_forward_backlog_events": "Hybrid mode: events committed to the spool and not yet forwarded to NATS.",
    "poetctl_forward_oldest_age_seconds": "Hybrid mode: age of the oldest event waiting to be forwarded; 0 when none.",
    "poetctl_nats_consumer_pending": "NATS: messages of a partition not yet delivered to a daemon (consumer lag).",
    "poetctl_nats_consumer_ack_pending": "NATS: messages of a partition delivered and not yet acknowledged.",
    "poetctl_nats_consumer_redelivered": "NATS: messages of a partition delivered more than once and not yet acked.",
    "poetctl_nats_partition_lag_seconds": "NATS: age of a partition's oldest unacknowledged event; 0 when none.",
    "poetctl_nats_partition_owned": "NATS: 1 when a daemon holds the partition's lease (label owner).",
    "poetctl_nats_stream_messages": "NATS: messages in each stream (events, dead letters, quarantine).",
}
BREAKER_STATES = ("closed", "open", "half_open")


def spool_figures(root: Path, lease_seconds: float = 30.0, now: float | None = None) -> dict[str, Any]:
    """The status document of the spool at ``root`` with :func:`extras` (``status`` reads the same)."""
    from ..backends.fs.layout import SpoolLayout
    from ..backends.fs.status import FsStatus
    from ..ops.status import collect

    layout = SpoolLayout(root)
    source = FsStatus(layout.require_real(*layout.read_dirs(), missing_ok=True))
    doc = collect(source, lease_seconds=lease_seconds, now=now)
    doc.update(extras(root))
    return doc


def extras(root: Path) -> dict[str, Any]:
    """Disk space of the spool's filesystem and the last fsck's findings (when fsck has run)."""
    from ..backends.fs.fsck_status import read_last

    out: dict[str, Any] = {}
    try:
        st = os.statvfs(root)
        out["filesystem"] = {"avail_bytes": st.f_bavail * st.f_frsize, "size_bytes": st.f_blocks * st.f_frsize}
    except OSError:
        pass
    last = read_last(root)
    if last is not None:
        out["fsck"] = last
    if os.path.isdir(root / "run" / "breakers"):  # integrations write them; skip the import when there are none
        from ..backends.fs.layout import SpoolLayout
        from ..integrations.breaker import breaker_states

        out["breakers"] = breaker_states(SpoolLayout(root))
    return out


def families(doc: dict[str, Any]) -> Iterator[Any]:
    """prometheus_client metric families from a status document."""
    from prometheus_client.core import GaugeMetricFamily

    def gauge(name: str, value: float | None = None, labels: list[str] | None = None) -> Any:
        return GaugeMetricFamily(name, GAUGES[name], value=value, labels=labels)

    g = gauge("poetctl_spool_events", labels=["state"])
    for state, n in doc["counts"].items():
        g.add_metric([state], n)
    yield g
    yield gauge("poetctl_oldest_pending_age_seconds", float(doc.get("oldest_pending_age_seconds") or 0.0))
    g = gauge("poetctl_daemons", labels=["status"])
    g.add_metric(["alive"], doc["daemons_alive"])
    g.add_metric(["stale"], doc["daemons_stale"])
    yield g
    beats = [float(d["last_beat"]) for d in doc.get("daemons", []) if d.get("alive") and "last_beat" in d]
    if beats:
        yield gauge("poetctl_last_heartbeat_timestamp_seconds", max(beats))
    fs = doc.get("filesystem")
    if fs:
        yield gauge("poetctl_filesystem_avail_bytes", fs["avail_bytes"])
        yield gauge("poetctl_filesystem_size_bytes", fs["size_bytes"])
    fsck = doc.get("fsck")
    if fsck:
        yield gauge("poetctl_fsck_loss_events", fsck["loss"])
        yield gauge("poetctl_fsck_last_run_timestamp_seconds", fsck["at"])
    breakers = doc.get("breakers") or []
    if breakers:
        g = gauge("poetctl_circuit_breaker_state", labels=["integration", "state"])
        for b in breakers:
            for st in BREAKER_STATES:
                g.add_metric([str(b.get("name")), st], 1.0 if b.get("state") == st else 0.0)
        yield g
    fwd = doc.get("forward")
    if fwd:
        yield gauge("poetctl_forward_backlog_events", fwd["backlog"])
        yield gauge("poetctl_forward_oldest_age_seconds", float(fwd.get("oldest_age_seconds") or 0.0))
    if doc.get("nats"):
        yield from _nats_families(doc["nats"], gauge)
    yield gauge("poetctl_status_timestamp_seconds", float(doc.get("at") or time.time()))


def _nats_families(n: dict[str, Any], gauge: Any) -> Iterator[Any]:
    """Per-partition consumer figures and owners, and the streams' sizes (``status --mode nats``'s detail)."""
    parts = [p for p in n["partitions"] if not p.get("missing")]
    for name, key in (
        ("poetctl_nats_consumer_pending", "pending"),
        ("poetctl_nats_consumer_ack_pending", "ack_pending"),
        ("poetctl_nats_consumer_redelivered", "redelivered"),
        ("poetctl_nats_partition_lag_seconds", "lag_seconds"),
    ):
        g = gauge(name, labels=["partition"])
        for p in parts:
            g.add_metric([str(p["partition"])], float(p.get(key) or 0.0))
        yield g
    g = gauge("poetctl_nats_partition_owned", labels=["partition", "owner"])
    for p in parts:
        if p.get("owner"):
            g.add_metric([str(p["partition"]), str(p["owner"])], 1.0)
    yield g
    g = gauge("poetctl_nats_stream_messages", labels=["stream"])
    g.add_metric([str(n["stream"]["name"])], float(n["stream"]["messages"]))
    g.add_metric(["dead"], float(n["dead_letters"]))
    g.add_metric(["corrupt"], float(n["corrupt"]))
    yield g


def textfile(doc: dict[str, Any]) -> bytes:
    """The node-exporter textfile (Prometheus text format 0.0.4) for a status document."""
    from prometheus_client import CollectorRegistry, generate_latest

    class _Doc:
        def collect(self) -> Iterator[Any]:
            return families(doc)

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Doc())
    return bytes(generate_latest(reg))


def write_textfile(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically: a new file beside it (O_EXCL, no links followed), fsync, rename.

    node-exporter reads ``*.prom`` only, so the temporary name ends otherwise
    and a half-written file is never read. The target's directory is the
    operator's (``--prometheus`` names it), not the spool's.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


EXPORTED: frozenset[str] = frozenset(GAUGES)

__all__ = ["EXPORTED", "GAUGES", "extras", "families", "spool_figures", "textfile", "write_textfile"]
