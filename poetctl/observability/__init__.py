"""Observability: Prometheus metrics, logs, alerts on the system itself, ``poetctl top``.

Nothing is imported here: ``poetctl emit`` and ``status`` must not pay for
prometheus_client (or anything else) unless they use it. Import the modules:

* :mod:`.metrics` - the daemon's metrics middleware, emit-side metrics, the HTTP endpoint;
* :mod:`.backlog` - gauges read at scrape time from the spool (pending, lag, dead, disk);
* :mod:`.logs` - the JSON-lines / console log formatter;
* :mod:`.alerts` - the alert evaluator that emits ``system.alert``;
* :mod:`.top` - the data behind ``poetctl top``.
"""
