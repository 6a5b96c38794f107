"""The ASGI app: routes, the refusal-to-JSON boundary, and an access log that never holds a secret.

Backend reads and commits block (spool files and fsync; NATS round trips), so
they run through :meth:`~.backend.Backend.call`, off the event loop: the spool
in the thread pool, where concurrent commits share one group flush
(:class:`~poetctl.backends.fs.writer.GroupCommitter`); NATS on threads of its
own with a deadline (:mod:`.natsmode`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import BackendUnavailable, InvalidData, PoetError, SpoolIOError
from ..integrations import links
from . import events, feedback, health, pagerduty, pages
from .backend import Backend
from .guards import Refused, TokenBuckets, bearer_index, read_body
from .settings import FORM_MAX_BYTES, ServeSettings

log = logging.getLogger("poetctl.serve")
Endpoint = Callable[[Request], Awaitable[Response]]


def json_errors(fn: Endpoint) -> Endpoint:
    """Refusals become their 4xx JSON; a spool that cannot be written or NATS down 503; anything else a bare 500."""

    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except Refused as r:
            return r.response()
        except ClientDisconnect:
            return Response(status_code=400)
        except SpoolIOError as exc:
            log.error("spool error: %s", exc)
            return JSONResponse({"error": "unavailable", "message": "the spool cannot be written"}, status_code=503)
        except BackendUnavailable as exc:
            log.warning("unavailable: %s", exc.message)
            return JSONResponse({"error": "unavailable", "message": exc.message}, status_code=503)

    return wrapper


class AccessLog:
    """One line per request: method, path (never the query string: it carries link tokens), status, time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        status = [0]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "").encode("unicode_escape").decode("ascii")[:200]
            log.info("%s %s %d %.1fms", scope.get("method"), path, status[0], (time.monotonic() - start) * 1000)


class _Raw:
    """An ASGI callable as a route endpoint (a plain function would be taken for a request handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def build_app(settings: ServeSettings, backend: Backend, clock: Callable[[], float] = time.time) -> Starlette:
    """The app serving ``backend`` (the spool or NATS) with ``settings``; ``clock`` (wall time) checks link expiry."""
    router = backend.router
    buckets = TokenBuckets(settings.rate_limit, settings.rate_burst)

    @json_errors
    async def post_events(request: Request) -> Response:
        who = bearer_index(request, settings.tokens)
        buckets.check(("events", who))
        ctype = request.headers.get("content-type", "")
        batch = events.media_type(ctype) in events.BATCH_TYPES
        limit = settings.max_body_bytes if batch else settings.max_event_bytes
        body = await read_body(request, limit, settings.body_timeout, "the batch" if batch else "the event")
        event_type = request.query_params.get("type")
        built = await backend.call(events.parse, router, body, ctype, settings.max_event_bytes, event_type, check=False)
        return JSONResponse(await backend.call(events.commit, router, built))

    @json_errors
    async def post_pagerduty(request: Request) -> Response:
        if not settings.pagerduty_secrets:
            raise Refused(403, "disabled", "PagerDuty webhooks are disabled: no [serve] pagerduty_secret is configured")
        body = await read_body(request, settings.max_event_bytes, settings.body_timeout, "the webhook")
        header = request.headers.get("x-pagerduty-signature")
        if not header:
            raise Refused(401, "unauthorized", "missing X-PagerDuty-Signature")
        if not pagerduty.verify(header, body, settings.pagerduty_secrets):
            raise Refused(403, "bad_signature", "X-PagerDuty-Signature does not match the body under any secret")
        from ..event import parse_json

        try:
            doc = parse_json(body, where="body", max_bytes=settings.max_event_bytes)
        except InvalidData as exc:
            raise Refused(400, "bad_webhook", str(exc)) from None
        result = await backend.call(pagerduty.to_feedback, doc, backend.alert_of)
        if isinstance(result, str):
            return JSONResponse({"ignored": result})
        eid, payload, correlation_id, alert_id = result

        def emit() -> dict[str, Any]:
            built = router.build(
                "feedback.alert_resolved",
                payload,
                id=eid,
                source=pagerduty.SOURCE,
                correlation_id=correlation_id,
                causation_id=alert_id,
            )
            return events.commit(router, [built])

        return JSONResponse(await backend.call(emit))

    def link_problem(link_id: str, token: str) -> Response | None:
        """A page refusing the link, or None when its token is valid for ``link_id`` now."""
        if not settings.feedback_secrets:
            return pages.message(
                "Feedback is not set up", "This server has no [serve] feedback_secret, so it cannot check links.", 503
            )
        if not token:
            return pages.message("This link is not valid", "The link has no token: open it from the alert.", 403)
        try:
            links.verify(token, link_id, secrets=settings.feedback_secrets.values, now=clock())
        except links.BadToken as exc:
            text = str(exc)
            hint = " Ask for the alert to be sent again." if "expired" in text else " Open the link from the alert."
            return pages.message("This link is not valid", text[:1].upper() + text[1:] + "." + hint, 403)
        return None

    async def load_alert(link_id: str) -> feedback.Alert | Response:
        alert = await backend.call(feedback.find_alert, backend, link_id)
        if alert is None:
            return pages.message("Alert not found", "This alert is not (or no longer) in the event store.", 404)
        prev = await backend.call(backend.event, alert.answer_id)
        if prev is not None:
            return pages.already(alert, prev)
        return alert

    async def feedback_page(request: Request) -> Response:
        link_id = request.path_params["event_id"]
        try:
            if request.method == "GET":
                token = request.query_params.get("t", "")
                form: dict[str, str] = {}
            else:
                ctype = events.media_type(request.headers.get("content-type", ""))
                if ctype != "application/x-www-form-urlencoded":
                    return pages.message("Not a form", "Send the answer with the form on this page.", 415)
                body = await read_body(request, FORM_MAX_BYTES, settings.body_timeout, "the form")
                try:
                    form = feedback.parse_form(body)
                except ValueError:
                    return pages.message("Not a form", "The form has too many fields.", 400)
                token = form.get("t", "")
            refused = link_problem(link_id, token)
            if refused is not None:
                return refused
            found = await load_alert(link_id)
            if not isinstance(found, feedback.Alert):
                return found
            alert = found
            if request.method == "GET":
                pre = request.query_params.get("answer", "")
                return pages.form(link_id, token, alert, feedback.Answer(answer=pre if pre in links.ANSWERS else ""))
            answer = feedback.Answer.from_form(form)
            if answer.errors:
                return pages.form(link_id, token, alert, answer, 422)
            payload = answer.payload(alert)
            if payload is None:
                return pages.message("Cannot record", "This alert names no execution id to attach an answer to.", 422)
            return await backend.call(record, alert, answer, payload)
        except Refused as r:
            return pages.message("Request refused", r.message, r.status)
        except BackendUnavailable as exc:
            log.warning("unavailable: %s", exc.message)
            return pages.message(
                "Try again shortly", "The event store cannot be reached right now: " + exc.message, 503
            )
        except ClientDisconnect:
            return Response(status_code=400)

    def record(alert: feedback.Alert, answer: feedback.Answer, payload: dict[str, Any]) -> Response:
        built = router.build(
            "feedback.human_validation",
            payload,
            id=alert.answer_id,
            source=feedback.SOURCE,
            correlation_id=alert.event.correlation_id,
            causation_id=alert.event.id,
        )
        try:
            added = router.commit_events([built])
        except PoetError as exc:
            log.error("feedback not recorded: %s", exc)
            return pages.message("Not recorded", "The answer could not be stored; please try again later.", 503)
        if not added[0]:  # another submit won the race: the store kept the first answer
            return pages.already(alert, backend.event(alert.answer_id))
        return pages.thanks(alert, answer)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", **backend.health()})

    async def readyz(request: Request) -> Response:
        checks = await backend.readiness()
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return JSONResponse({"error": code, "message": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    routes: list[Any] = [
        Route("/events", post_events, methods=["POST"]),
        Route("/webhooks/pagerduty", post_pagerduty, methods=["POST"]),
        Route("/poet/feedback/{event_id}", feedback_page, methods=["GET", "POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    metrics = health.metrics_app()
    if metrics is not None:
        routes.append(Route("/metrics", _Raw(metrics), methods=["GET"]))
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.add_middleware(AccessLog)
    return app
