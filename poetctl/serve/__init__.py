"""``poetctl serve``: one HTTP server (Starlette on uvicorn) for events, webhooks and the feedback page.

Modules: :mod:`.settings` (``[serve]`` resolved, secrets loaded), :mod:`.guards`
(bearer tokens, token buckets, bounded body reads), :mod:`.events`
(``POST /events``), :mod:`.pagerduty` (``POST /webhooks/pagerduty``),
:mod:`.feedback` and :mod:`.pages` (the feedback page), :mod:`.health`
(``/healthz``, ``/readyz``, ``/metrics``), :mod:`.backend` (what is served:
the spool) and :mod:`.natsmode` (or NATS JetStream, ``delivery_mode = "nats"``),
:mod:`.app` (routes) and :mod:`.runner` (uvicorn). Nothing here is imported by other commands:
starlette and uvicorn load only when ``serve`` runs.
"""
