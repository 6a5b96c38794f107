"""Prometheus metrics of the daemon (a middleware) and of emitting processes.

The per-event path touches no prometheus_client object and takes no lock:
each thread adds to its own plain dicts and lists (:class:`_Acc`), and a
custom collector sums them when Prometheus scrapes. prometheus_client's own
``Counter.inc``/``Histogram.observe`` take a lock and cost a few
microseconds each; at ~20k events/s per core that alone would be several
percent of the drain. prometheus_client is imported only when a registry is
built (``--metrics-addr``, ``status --prometheus``), never by ``emit``.

Names follow the Prometheus conventions (``poetctl_`` prefix, ``_total``
counters, ``_seconds`` histograms, base units). See :data:`EXPORTED` for the
list; the dashboard and rule tests check their expressions against it.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..daemon.middleware import Middleware
from ..daemon.outcomes import EXPIRED, Dead, Done, Failed, Released

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from ..daemon.handling import Sub
    from ..daemon.outcomes import Outcome
    from ..event import Event
    from ..transport import Delivery, Fetched

# Handler durations: 0.5 ms .. 60 s. Emit -> handler start: 1 ms .. 1 h (a backlog or a retry waits long).
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)

# (metric, help, labels); counters without their _total suffix (prometheus_client adds it).
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "poetctl_events_claimed": ("Events leased by this daemon.", ()),
    "poetctl_events_handled": ("Events handled to the end (processed), by type.", ("type",)),
    "poetctl_events_retried": ("Failed attempts that will be retried, by type.", ("type",)),
    "poetctl_events_dead_lettered": ("Events moved to dead/, by type and reason.", ("type", "reason")),
    "poetctl_events_expired": ("Events dead-lettered because they expired, by type.", ("type",)),
    "poetctl_events_quarantined": ("Unreadable input moved to corrupt/ (its type is unknown).", ()),
    "poetctl_events_handed_back": ("Leased events handed back at shutdown.", ()),
    "poetctl_events_recovered": ("Events of dead daemons put back to pending.", ()),
    "poetctl_handler_errors": ("Handler runs that raised or timed out, by handler.", ("handler",)),
}
HISTOGRAMS: dict[str, str] = {
    "poetctl_handler_duration_seconds": "Handler run time, by handler.",
    "poetctl_emit_to_handle_seconds": "From the event's timestamp to the start of a handler run, by handler.",
}
EMIT_COUNTERS = {"poetctl_events_emitted": ("Events added to the spool by this process, by type.", ("type",))}
EMIT_HISTOGRAM = ("poetctl_emit_seconds", "Time to commit one emitted group durably.")


# Outcomes that end a lease (a retry keeps it).
_FINAL = frozenset(
    ("poetctl_events_handled", "poetctl_events_dead_lettered", "poetctl_events_expired", "poetctl_events_handed_back")
)


class _Hist:
    """Non-cumulative bucket counts (last slot: above every bound) and the sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, n: int) -> None:
        self.counts = [0] * (n + 1)
        self.sum = 0.0


class _Handler:
    """One handler's figures on one thread (the hot path touches only this)."""

    __slots__ = ("dsum", "dur", "errors", "lat", "lsum")

    def __init__(self) -> None:
        self.dur = [0] * (len(DURATION_BUCKETS) + 1)
        self.dsum = 0.0
        self.lat = [0] * (len(LATENCY_BUCKETS) + 1)
        self.lsum = 0.0
        self.errors = 0


class _Acc:
    """One thread's counts: only that thread writes them, the collector reads them.

    ``done`` (handled by type) and ``handlers`` are the per-event fast paths
    (string keys, no tuple built per event); ``c`` and ``h`` hold the rest.
    """

    __slots__ = ("c", "done", "h", "handlers")

    def __init__(self) -> None:
        self.c: dict[tuple[str, ...], int] = {}
        self.h: dict[tuple[str, str], _Hist] = {}
        self.done: dict[str, int] = {}
        self.handlers: dict[str, _Handler] = {}


class _Accumulators:
    """Per-thread :class:`_Acc` objects, all remembered (counts outlive their threads)."""

    def __init__(self) -> None:
        self.all: list[_Acc] = []
        self._lock = threading.Lock()
        self._local = threading.local()

    def get(self) -> _Acc:
        try:
            return self._local.acc  # type: ignore[no-any-return]
        except AttributeError:
            acc = _Acc()
            with self._lock:
                self.all.append(acc)
            self._local.acc = acc
            return acc

    def _accs(self) -> list[_Acc]:
        with self._lock:
            return list(self.all)

    def counters(self) -> dict[tuple[str, ...], int]:
        out: dict[tuple[str, ...], int] = {}

        def add(k: tuple[str, ...], v: int) -> None:
            out[k] = out.get(k, 0) + v

        for a in self._accs():
            for k, v in list(a.c.items()):  # a copy: the owning thread may add a key meanwhile
                add(k, v)
            for t, v in list(a.done.items()):
                add(("poetctl_events_handled", t), v)
            for name, hd in list(a.handlers.items()):
                if hd.errors:
                    add(("poetctl_handler_errors", name), hd.errors)
        return out

    def histograms(self) -> dict[tuple[str, str], tuple[list[int], float]]:
        out: dict[tuple[str, str], tuple[list[int], float]] = {}

        def add(k: tuple[str, str], counts: list[int], total: float) -> None:
            if k in out:
                prev, s = out[k]
                out[k] = ([x + y for x, y in zip(prev, counts, strict=True)], s + total)
            else:
                out[k] = (counts, total)

        for a in self._accs():
            for k, h in list(a.h.items()):
                add(k, list(h.counts), h.sum)
            for name, hd in list(a.handlers.items()):
                add(("poetctl_handler_duration_seconds", name), list(hd.dur), hd.dsum)
                add(("poetctl_emit_to_handle_seconds", name), list(hd.lat), hd.lsum)
        return out


def _bump(acc: _Acc, key: tuple[str, ...], n: int = 1) -> None:
    acc.c[key] = acc.c.get(key, 0) + n


class DaemonMetrics(Middleware):
    """The daemon's metrics, as a loop middleware; :meth:`registry` builds what ``/metrics`` serves.

    ``clock`` measures emit -> handler start (event timestamps are Unix
    seconds, so it must be wall time; tests pass a fake one). ``backlog``
    returns the gauges read at scrape time (see :mod:`.backlog`); it is
    called at most once per ``backlog_ttl`` seconds.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        backlog: Callable[[], Any] | None = None,
        backlog_ttl: float = 5.0,
    ) -> None:
        self.clock = clock
        self.accs = _Accumulators()
        self.backlog = backlog
        self.backlog_ttl = backlog_ttl
        self._backlog_cache: tuple[float, Any] | None = None
        self._backlog_lock = threading.Lock()
        self.emit = EmitMetrics(self.accs)

    # -- hooks (worker threads; keep them tiny) ---------------------------------------------
    def on_recover(self, count: int) -> None:
        if count:
            _bump(self.accs.get(), ("poetctl_events_recovered",), count)

    def on_fetch(self, fetched: Fetched) -> None:
        n = len(fetched.deliveries)
        if n or fetched.quarantined:
            acc = self.accs.get()
            if n:
                _bump(acc, ("poetctl_events_claimed",), n)
            if fetched.quarantined:
                _bump(acc, ("poetctl_events_quarantined",), fetched.quarantined)

    def after_handle(self, event: Event, handler: Sub, seconds: float, error: BaseException | None) -> None:
        acc = self.accs.get()
        hd = acc.handlers.get(handler.name)
        if hd is None:
            hd = acc.handlers[handler.name] = _Handler()
        hd.dur[bisect_left(DURATION_BUCKETS, seconds)] += 1
        hd.dsum += seconds
        waited = self.clock() - seconds - event.timestamp
        if waited < 0.0:
            waited = 0.0  # clock skew between emitter and daemon
        hd.lat[bisect_left(LATENCY_BUCKETS, waited)] += 1
        hd.lsum += waited
        if error is not None:
            hd.errors += 1

    def on_outcome(self, delivery: Delivery, outcome: Outcome) -> None:
        acc = self.accs.get()
        t = delivery.event.type
        if type(outcome) is Done:
            done = acc.done
            done[t] = done.get(t, 0) + 1
            return
        if isinstance(outcome, Failed):
            key: tuple[str, ...] = ("poetctl_events_retried", t)
        elif isinstance(outcome, Dead):
            if outcome.reason == EXPIRED:
                key = ("poetctl_events_expired", t)
            else:
                key = ("poetctl_events_dead_lettered", t, outcome.reason)
        elif isinstance(outcome, Released):
            key = ("poetctl_events_handed_back",)
        else:
            return
        acc.c[key] = acc.c.get(key, 0) + 1

    # -- reading ----------------------------------------------------------------------------
    def inflight(self, counters: dict[tuple[str, ...], int] | None = None) -> int:
        """Leased and not finished (parked retries included): claimed minus final outcomes."""
        c = self.accs.counters() if counters is None else counters
        final = sum(v for k, v in c.items() if k[0] in _FINAL)
        return max(0, c.get(("poetctl_events_claimed",), 0) - final)

    def backlog_figures(self) -> Any:
        """The backlog provider's result, cached for ``backlog_ttl`` (None without a provider or on error)."""
        if self.backlog is None:
            return None
        with self._backlog_lock:
            now = time.monotonic()
            if self._backlog_cache is not None and now - self._backlog_cache[0] < self.backlog_ttl:
                return self._backlog_cache[1]
            try:
                value = self.backlog()
            except Exception as exc:  # a scrape must not fail because the spool could not be read
                from ..daemon import log

                log.warning("cannot read the spool for metrics", error=log.error_text(exc))
                value = None
            self._backlog_cache = (now, value)
            return value

    def snapshot(self) -> dict[str, Any]:
        """Plain-data totals (the stats file ``poetctl top`` reads): counters and cumulative histograms."""
        c = self.accs.counters()
        hists = self.accs.histograms()
        return {
            "counters": [[*k, v] for k, v in sorted(c.items())],
            "histograms": {
                f"{m}|{h}": {"counts": counts, "sum": round(s, 6)} for (m, h), (counts, s) in sorted(hists.items())
            },
            "inflight": self.inflight(c),
        }

    def registry(self, *, process: bool = True) -> CollectorRegistry:
        """A fresh registry with this daemon's metrics (and the process's CPU, memory, open files)."""
        from prometheus_client import CollectorRegistry, ProcessCollector

        reg = CollectorRegistry(auto_describe=False)
        reg.register(_Collector(self))
        if process:
            ProcessCollector(registry=reg)
        return reg


class EmitMetrics:
    """Emit-side metrics: events emitted by type and the commit time, for any process with a router.

    :func:`instrument_router` wires one to a router; the daemon's
    :class:`DaemonMetrics` has one (its handlers' follow-ups are emitted there).
    """

    def __init__(self, accs: _Accumulators | None = None) -> None:
        self.accs = accs or _Accumulators()

    def committed(self, events: Sequence[Event], added: Sequence[bool], seconds: float) -> None:
        acc = self.accs.get()
        for ev, new in zip(events, added, strict=False):
            if new:
                key = ("poetctl_events_emitted", ev.type)
                acc.c[key] = acc.c.get(key, 0) + 1
        h = acc.h.get((EMIT_HISTOGRAM[0], ""))
        if h is None:
            h = acc.h[(EMIT_HISTOGRAM[0], "")] = _Hist(len(DURATION_BUCKETS))
        h.counts[bisect_left(DURATION_BUCKETS, seconds)] += 1
        h.sum += seconds

    def registry(self) -> CollectorRegistry:
        from prometheus_client import CollectorRegistry

        reg = CollectorRegistry(auto_describe=False)
        reg.register(_Collector(None, self.accs))
        return reg


def instrument_router(router: Any, metrics: EmitMetrics) -> None:
    """Count what ``router`` publishes (its publisher: the one path emits and follow-ups take)."""
    publisher = router.publisher
    publisher.observers = (*publisher.observers, metrics.committed)


class _Collector:
    """Sums the per-thread counts when Prometheus scrapes (and reads the backlog, cached)."""

    def __init__(self, daemon: DaemonMetrics | None, accs: _Accumulators | None = None) -> None:
        self.daemon = daemon
        self.accs = daemon.accs if daemon is not None else accs
        assert self.accs is not None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        assert self.accs is not None
        counters = self.accs.counters()
        specs = {**COUNTERS, **EMIT_COUNTERS} if self.daemon is not None else EMIT_COUNTERS
        for name, (doc, labels) in specs.items():
            fam = CounterMetricFamily(name, doc, labels=list(labels))
            for k, v in counters.items():
                if k[0] == name:
                    fam.add_metric(list(k[1:]), v)
            if not labels and not fam.samples:
                fam.add_metric([], 0)  # an unlabelled counter exists from the start (rate() needs the 0)
            yield fam
        hists = self.accs.histograms()
        hspecs = (
            {**HISTOGRAMS, EMIT_HISTOGRAM[0]: EMIT_HISTOGRAM[1]} if self.daemon is not None else dict([EMIT_HISTOGRAM])
        )
        for name, doc in hspecs.items():
            emit = name == EMIT_HISTOGRAM[0]
            hfam = HistogramMetricFamily(name, doc, labels=[] if emit else ["handler"])
            bounds = LATENCY_BUCKETS if name == "poetctl_emit_to_handle_seconds" else DURATION_BUCKETS
            for (m, label), (counts, total) in sorted(hists.items()):
                if m == name:
                    hfam.add_metric([] if emit else [label], cumulative(bounds, counts), total)
            yield hfam
        if self.daemon is None:
            return
        yield GaugeMetricFamily(
            "poetctl_inflight_events",
            "Events leased by this daemon and not finished.",
            value=self.daemon.inflight(counters),
        )
        figures = self.daemon.backlog_figures()
        if figures is not None:
            from .backlog import families

            yield from families(figures)


def cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus ``le`` buckets from non-cumulative counts (the last count is above every bound)."""
    out: list[tuple[str, float]] = []
    run = 0
    for b, n in zip(bounds, counts, strict=False):
        run += n
        out.append((_le(b), run))
    out.append(("+Inf", run + counts[-1]))
    return out


def _le(b: float) -> str:
    from prometheus_client.utils import floatToGoString

    return str(floatToGoString(b))  # type: ignore[no-untyped-call]


def serve(addr: str, registry: CollectorRegistry) -> Any:
    """Serve ``registry`` on ``host:port`` (a daemon thread); the server (``.shutdown()`` stops it).

    ``addr`` is ``HOST:PORT`` (``[::1]:9464`` for IPv6); binding anything but
    loopback is the operator's explicit choice.
    """
    from prometheus_client import start_http_server

    host, port = parse_addr(addr)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def parse_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); ValueError with what was expected."""
    host, sep, port = addr.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{addr!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    return host, int(port)


# Every metric name a scrape of the daemon can show (histograms with their suffixes).
EXPORTED: frozenset[str] = frozenset(
    [f"{n}_total" for n in (*COUNTERS, *EMIT_COUNTERS)]
    + [f"{n}{s}" for n in (*HISTOGRAMS, EMIT_HISTOGRAM[0]) for s in ("_bucket", "_sum", "_count")]
    + ["poetctl_inflight_events"]
)

__all__ = [
    "DURATION_BUCKETS",
    "EXPORTED",
    "LATENCY_BUCKETS",
    "DaemonMetrics",
    "EmitMetrics",
    "cumulative",
    "instrument_router",
    "parse_addr",
    "serve",
]
