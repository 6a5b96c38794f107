"""``poetctl status`` itself, without typer (options: :mod:`poetctl.cli.status`; see :mod:`poetctl.cli.fastpath`)."""

from __future__ import annotations

import sys
from pathlib import Path

from .boundary import errors_to_exit, load

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

STATUS_KEYS = ("warn_lag", "max_lag", "max_dead", "max_corrupt", "max_stale", "min_daemons")
STATUS_DEFAULTS: dict[str, Any] = {
    "warn_lag": "1m",
    "max_lag": "5m",
    "max_dead": 0,
    "max_corrupt": 0,
    "max_stale": 0,
    "min_daemons": 0,
}


def status(
    check: bool = False,
    warn_lag: str | None = None,
    max_lag: str | None = None,
    max_dead: int | None = None,
    max_corrupt: int | None = None,
    max_stale: int | None = None,
    min_daemons: int | None = None,
    stale_after: str | None = None,
    prometheus: Path | None = None,
    output: str | None = None,
    mode: str | None = None,
    spool: Path | None = None,
    config: Path | None = None,
) -> None:
    """``poetctl status`` after parsing (the typer command and the fast path both call this)."""
    _status(
        check,
        (warn_lag, max_lag, max_dead, max_corrupt, max_stale, min_daemons),
        stale_after,
        output,
        spool,
        config,
        prometheus,
        mode,
    )


def _fmt_age(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s / 3600:.1f}h" if s >= 3600 else f"{s / 60:.1f}m" if s >= 120 else f"{s:.1f}s"


@errors_to_exit
def _status(
    check: bool,
    limits: tuple[str | None, str | None, int | None, int | None, int | None, int | None],
    stale_after: str | None,
    output: str | None,
    spool: Path | None,
    config: Path | None,
    prometheus: Path | None = None,
    mode: str | None = None,
) -> None:
    from ..backends.fs.layout import SpoolLayout
    from ..backends.fs.status import FsStatus
    from ..ops.status import Thresholds, collect, evaluate, nagios_line, parse_duration
    from .mode import resolve_mode
    from .output import resolve_format, write_json, write_jsonl

    fmt = resolve_format(output) if output is not None or not check else None
    cfg = load(spool, config)
    given: dict[str, Any] = dict(zip(STATUS_KEYS, limits, strict=True))
    v: dict[str, Any] = {
        k: given[k] if given[k] is not None else cfg.status.get(k, STATUS_DEFAULTS[k]) for k in STATUS_KEYS
    }

    def origin(key: str) -> str:
        return "--" + key.replace("_", "-") if given[key] is not None else f"[status] {key}"

    t = Thresholds(
        parse_duration(str(v["warn_lag"]), origin("warn_lag")),
        parse_duration(str(v["max_lag"]), origin("max_lag")),
        int(v["max_dead"]),
        int(v["max_corrupt"]),
        int(v["max_stale"]),
        int(v["min_daemons"]),
    )
    stale = parse_duration(stale_after, "--stale-after") if stale_after else None
    lease = float(cfg.daemon.get("lease_seconds", 30.0))
    nats = resolve_mode(mode, cfg) == "nats"
    try:
        if nats:
            doc = _nats_doc(cfg, lease, stale)
        else:
            layout = SpoolLayout(cfg.spool)
            source = FsStatus(layout.require_real(*layout.read_dirs(), missing_ok=True))
            doc = collect(source, lease_seconds=lease, stale_after=stale)
            doc["breakers"] = _breakers(layout)
            doc["limits"] = _limits(cfg, layout, doc["counts"]["pending"])
            _add_forward_backlog(doc, layout)
    except Exception as exc:
        if not check:
            raise  # errors_to_exit: 66 no spool, 74 I/O error, 77 permission denied
        _unknown(exc, cfg.spool, fmt)
    if prometheus is not None:
        _textfile(doc, prometheus)
        if output is None and not check:
            return
    verdict = evaluate(doc, t) if check else None
    if verdict is not None:
        doc["check"] = verdict
    if fmt == "json":
        write_json(doc)
    elif fmt == "jsonl":
        write_jsonl([doc])
    elif fmt == "table":
        _table(doc)
    if verdict is not None:
        if fmt is None:
            sys.stdout.write(nagios_line(doc, verdict, t) + "\n")
        raise SystemExit(verdict["code"])


def _limits(cfg: Any, layout: Any, pending: int) -> dict[str, Any] | None:
    """``[limits]``: how full the spool is against each, and the sources throttled in the last minute."""
    from ..limits import Limits

    lim = Limits.of(cfg)
    if not lim.any:
        return None
    out: dict[str, Any] = {"pending": pending, "max_pending": lim.max_pending or None}
    out["pending_fill"] = round(pending / lim.max_pending, 4) if lim.max_pending else None
    out["pending_bytes"] = None
    out["max_pending_bytes"] = lim.max_pending_bytes or None
    out["bytes_fill"] = None
    out["throttled"] = []
    from ..backends.fs.limits import peek

    view = peek(layout)  # read only: status writes nothing
    if view is not None:
        out["gauge_pending"] = view.pending  # what emitters go by (daemons set it from each listing)
        out["pending_bytes"] = view.pending_bytes
        out["throttled"] = view.throttled(lim)
        if lim.max_pending_bytes:
            out["bytes_fill"] = round(view.pending_bytes / lim.max_pending_bytes, 4)
    return out


def _nats_doc(cfg: Any, lease: float, stale: float | None) -> dict[str, Any]:
    """The status document over NATS: the same keys, plus ``nats`` (stream, partitions: lag, owner)."""
    from ..backends.nats.status import NatsStatus
    from ..ops.status import collect
    from .mode import nats_transport

    t = nats_transport(cfg)
    try:
        source = NatsStatus(t)
        doc = collect(source, lease_seconds=lease, stale_after=stale)
        doc["nats"] = source.info
        from ..backends.nats.limits import status as limits_status

        doc["limits"] = limits_status(t)  # [limits]: fullness and throttled sources, as on the spool
        return doc
    finally:
        t.close()


def _textfile(doc: dict[str, Any], path: Path) -> None:
    """--prometheus: the status figures (plus disk and the last fsck) as a textfile, replaced atomically."""
    from ..errors import SpoolIOError, UsageError
    from ..observability.backlog import extras, textfile, write_textfile

    if "nats" not in doc:  # the spool's disk and last fsck; NATS has neither here
        doc.update(extras(Path(doc["spool"])))
    try:
        data = textfile(doc)
    except ImportError:
        raise UsageError("--prometheus needs prometheus-client: pip install 'poetctl[metrics]'") from None
    try:
        write_textfile(path, data)
    except OSError as exc:
        raise SpoolIOError(f"--prometheus {path}: cannot write: {exc.strerror or exc}") from None


def _breakers(layout: Any) -> list[dict[str, Any]]:
    """The outbound integrations' circuit breakers (run/breakers/), cheap when there are none."""
    if not (layout.root / "run" / "breakers").is_dir():
        return []
    from ..integrations.breaker import breaker_states

    return breaker_states(layout)


def _add_forward_backlog(doc: dict[str, Any], layout: Any) -> None:
    """Hybrid mode: events committed to the spool but not yet forwarded to JetStream, and the oldest one's age."""
    import os
    import time

    from ..backends.fs.paths import OUTBOX

    if not os.path.isdir(layout.root / OUTBOX):
        return  # no forwarder ever ran here (outbox.backlog would say None): skip importing it
    from ..backends.fs.outbox import backlog

    b = backlog(layout, time.time())
    if b is not None:
        doc["forward"] = {"backlog": b.count, "oldest_age_seconds": b.oldest_age}


def _unknown(exc: Exception, spool: Path, fmt: str | None) -> NoReturn:
    """``--check`` when the spool cannot be read: Nagios UNKNOWN (exit 3), never a traceback or a WARNING."""
    from ..errors import PoetError
    from ..ops.status import UNKNOWN
    from .common import io_failure
    from .output import clean, error, write_json, write_jsonl

    failure = exc if isinstance(exc, PoetError) else io_failure(exc)
    if failure is None:
        raise exc
    message = str(failure)
    error(message)
    verdict = {"code": UNKNOWN, "status": "UNKNOWN", "reasons": [message]}
    if fmt == "json":
        write_json({"spool": str(spool), "check": verdict})
    elif fmt == "jsonl":
        write_jsonl([{"spool": str(spool), "check": verdict}])
    else:
        sys.stdout.write(f"POET UNKNOWN - {clean(message)}\n")
    raise SystemExit(UNKNOWN)


def _table(doc: dict[str, Any]) -> None:
    from .output import console, styled, write_table

    c = doc["counts"]
    tp = doc["throughput"]
    recent = tp["processed_recent"]
    con = console()
    con.print(
        styled(
            ("spool", "bold"),
            f" {doc['spool']}   lag (oldest pending): {_fmt_age(doc['oldest_pending_age_seconds'])}"
            f"   daemons: {doc['daemons_alive']} alive, {doc['daemons_stale']} stale",
        )
    )
    write_table(["state", "events"], [(k, v) for k, v in c.items()])
    if recent is not None:
        con.print(
            "processed (by event time): "
            + ", ".join(f"{v} in the last {k}" for k, v in recent.items())
            + f"   daemons: {tp['daemons_per_second']}/s"
        )
    if doc["daemons"]:
        write_table(
            ["daemon", "alive", "beat age", "processed", "dead", "inflight", "lag", "rate/s"],
            [
                (
                    d.get("owner"),
                    "yes" if d["alive"] else "STALE",
                    _fmt_age(d["age_seconds"]),
                    d.get("counts", {}).get("processed"),
                    d.get("counts", {}).get("dead"),
                    d.get("inflight"),
                    d.get("lag_seconds"),
                    d.get("rate_per_second"),
                )
                for d in doc["daemons"]
            ],
        )
    if doc.get("breakers"):
        write_table(
            ["integration", "breaker", "failures", "retry at", "last error"],
            [
                (b.get("name"), b.get("state"), b.get("failures"), b.get("retry_at"), b.get("last_error"))
                for b in doc["breakers"]
            ],
        )
    lim = doc.get("limits")
    if lim:
        parts = []
        if lim["max_pending"]:
            parts.append(f"{lim['pending']} of {lim['max_pending']} pending ({100 * lim['pending_fill']:.0f}%)")
        if lim["max_pending_bytes"]:
            b = lim["pending_bytes"]
            shown = (
                f"{b} of {lim['max_pending_bytes']} bytes"
                if b is not None
                else f"? of {lim['max_pending_bytes']} bytes"
            )
            parts.append(shown + (f" ({100 * lim['bytes_fill']:.0f}%)" if lim["bytes_fill"] is not None else ""))
        con.print("limits: " + ("; ".join(parts) if parts else "rates only"))
        for t in lim["throttled"]:
            con.print(
                f"throttled: source {t['pattern']} ({t['rate_per_s']:g}/s): {t['refused_total']} refused, "
                f"last {t['last_refused_s_ago']} s ago"
            )
    if "nats" in doc:
        n = doc["nats"]
        st = n["stream"]
        con.print(
            f"stream {st['name']}: {st['messages']} message(s), seq {st['first_seq']}..{st['last_seq']}, "
            f"R{st['replicas']}   pending {n['pending']}, ack pending {n['ack_pending']}, "
            f"redelivered {n['redelivered']}, dead letters {n['dead_letters']}"
        )
        write_table(
            ["partition", "consumer", "pending", "ack pending", "redelivered", "lag", "owner"],
            [
                (
                    r["partition"],
                    r["consumer"] + (" (missing: run 'poetctl nats setup')" if r.get("missing") else ""),
                    r.get("pending"),
                    r.get("ack_pending"),
                    r.get("redelivered"),
                    _fmt_age(r.get("lag_seconds")),
                    r.get("owner") or "-",
                )
                for r in n["partitions"]
            ],
        )
    if "forward" in doc:
        f = doc["forward"]
        con.print(f"forward backlog (hybrid): {f['backlog']} event(s), oldest {_fmt_age(f['oldest_age_seconds'])}")
    if "check" in doc:
        v = doc["check"]
        con.print(f"check: {v['status']}" + (f" - {'; '.join(v['reasons'])}" if v["reasons"] else ""))
