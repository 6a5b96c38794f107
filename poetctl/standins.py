"""Local stand-ins on 127.0.0.1 playing PagerDuty (Events API v2), Slack (incoming webhook) and a webhook receiver.

Each validates requests as the real service documents them and answers as
it does; a test can queue failures (``fail(status, body, headers)``,
``hang()``, ``slow_body()``) that the next requests get instead. Requests
are recorded; ``wait_for(n)`` blocks on a condition (no sleeping) until n
have arrived. Used by the tests (``tests/fakeapis.py``) and by
``make demo-integrations`` (:mod:`poetctl.demo_integrations`); never by
poetctl itself. ``http.server`` is fine for a stand-in: it is not ``poetctl serve``.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from poetctl.integrations import stdwebhooks

Reply = tuple[int, bytes, dict[str, str]]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    reply: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeAPI:
    """A threaded server; ``validate(request) -> Reply`` decides the answer when no failure is queued."""

    validate: Callable[[Request], Reply]
    requests: list[Request] = field(default_factory=list)
    queued: list[Callable[[BaseHTTPRequestHandler], int]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- scripting --------------------------------------------------------------------------
    def fail(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, times: int = 1) -> None:
        for _ in range(times):
            self.queued.append(lambda h: _send(h, (status, body, headers or {})))

    def hang(self, times: int = 1) -> None:
        """Accept the request and answer nothing until the test ends (a read timeout for the client)."""

        def act(h: BaseHTTPRequestHandler) -> int:
            self.release.wait(30)
            return 0

        for _ in range(times):
            self.queued.append(act)

    def slow_body(self, times: int = 1) -> None:
        """Send 200 headers at once, then a 4 KB body one byte every 50 ms."""

        def act(h: BaseHTTPRequestHandler) -> int:
            h.send_response(200)
            h.send_header("content-length", "4096")
            h.end_headers()
            for _ in range(4096):
                if self.release.is_set():
                    break
                try:
                    h.wfile.write(b"x")
                    h.wfile.flush()
                except OSError:
                    break
                time.sleep(0.05)
            return 200

        for _ in range(times):
            self.queued.append(act)

    def wait_for(self, n: int, timeout: float = 60) -> list[Request]:
        """Block until ``n`` requests have been answered (or fail the test)."""
        with self.cond:
            ok = self.cond.wait_for(lambda: sum(1 for r in self.requests if r.reply) >= n, timeout)
        assert ok, f"expected {n} requests, got {len(self.requests)}"
        return list(self.requests)

    def answered(self) -> list[Request]:
        with self.cond:
            return [r for r in self.requests if r.reply]


def _send(h: BaseHTTPRequestHandler, reply: Reply) -> int:
    status, body, headers = reply
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k, v)
    h.send_header("content-length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)
    return status


@contextmanager
def serve(api: FakeAPI) -> Iterator[FakeAPI]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            req = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(n))
            with api.cond:
                api.requests.append(req)
                action = api.queued.pop(0) if api.queued else None
            status = action(self) if action is not None else _send(self, api.validate(req))
            with api.cond:
                req.reply = status or -1
                api.cond.notify_all()

        do_POST = _handle
        do_GET = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    api.port = server.server_address[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield api
    finally:
        api.release.set()
        server.shutdown()
        server.server_close()


def refused_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def _json_reply(status: int, doc: Any) -> Reply:
    return status, json.dumps(doc).encode(), {"content-type": "application/json"}


# -- PagerDuty Events API v2 ----------------------------------------------------------------
PD_TOP = {"routing_key", "event_action", "dedup_key", "payload", "images", "links", "client", "client_url"}
PD_PAYLOAD = {"summary", "source", "severity", "timestamp", "component", "group", "class", "custom_details"}
ISO8601 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})$")


def pagerduty_errors(req: Request) -> list[str]:
    """What PagerDuty's Events API v2 would refuse in ``req`` (empty: accepted)."""
    if req.method != "POST" or req.path != "/v2/enqueue":
        return [f"no route {req.method} {req.path}"]
    if not req.headers.get("content-type", "").startswith("application/json"):
        return ["content-type must be application/json"]
    try:
        ev = req.json()
    except ValueError:
        return ["body is not JSON"]
    if not isinstance(ev, dict):
        return ["event must be an object"]
    errs = [f"unknown field {k}" for k in ev if k not in PD_TOP]
    rk = ev.get("routing_key")
    if not isinstance(rk, str) or len(rk) != 32:
        errs.append("'routing_key' must be a 32 character string")
    action = ev.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        errs.append("'event_action' must be trigger, acknowledge or resolve")
    dk = ev.get("dedup_key")
    if dk is not None and (not isinstance(dk, str) or not dk or len(dk) > 255):
        errs.append("'dedup_key' must be a string of 1-255 characters")
    if action in ("acknowledge", "resolve") and dk is None:
        errs.append("'dedup_key' is required for acknowledge and resolve")
    if action == "trigger":
        p = ev.get("payload")
        if not isinstance(p, dict):
            return [*errs, "'payload' is required for trigger"]
        errs += [f"unknown payload field {k}" for k in p if k not in PD_PAYLOAD]
        s = p.get("summary")
        if not isinstance(s, str) or not s or len(s) > 1024:
            errs.append("'payload.summary' must be a string of 1-1024 characters")
        if not isinstance(p.get("source"), str) or not p["source"]:
            errs.append("'payload.source' is required")
        if p.get("severity") not in ("critical", "error", "warning", "info"):
            errs.append("'payload.severity' must be critical, error, warning or info")
        if "timestamp" in p and not (isinstance(p["timestamp"], str) and ISO8601.match(p["timestamp"])):
            errs.append("'payload.timestamp' must be ISO 8601")
        for k in ("component", "group", "class"):
            if k in p and not isinstance(p[k], str):
                errs.append(f"'payload.{k}' must be a string")
    for link in ev.get("links", []) if isinstance(ev.get("links", []), list) else [None]:
        if not isinstance(link, dict) or not isinstance(link.get("href"), str) or set(link) - {"href", "text"}:
            errs.append("'links' entries must be {href, text}")
    return errs


def pagerduty() -> FakeAPI:
    def validate(req: Request) -> Reply:
        errs = pagerduty_errors(req)
        if errs:
            return _json_reply(400, {"status": "invalid event", "message": "Event object is invalid", "errors": errs})
        ev = req.json()
        key = ev.get("dedup_key") or "generated-dedup-key"
        return _json_reply(202, {"status": "success", "message": "Event processed", "dedup_key": key})

    return FakeAPI(validate)


# -- Slack incoming webhook -----------------------------------------------------------------
def _text_obj(t: Any, kinds: Sequence[str], limit: int) -> list[str]:
    if not isinstance(t, dict) or t.get("type") not in kinds or not isinstance(t.get("text"), str):
        return [f"text object must be one of {kinds} with text"]
    if not t["text"] or len(t["text"]) > limit:
        return [f"text must be 1-{limit} characters"]
    return []


def slack_errors(doc: Any) -> list[str]:
    """Block Kit problems in a message (a subset of Slack's rules: the block types poetctl uses)."""
    if not isinstance(doc, dict):
        return ["invalid_payload"]
    errs: list[str] = []
    blocks = doc.get("blocks", [])
    if not isinstance(blocks, list) or len(blocks) > 50:
        return ["blocks must be a list of at most 50"]
    ids: set[str] = set()
    for b in blocks:
        if not isinstance(b, dict):
            errs.append("block must be an object")
            continue
        bid = b.get("block_id")
        if bid is not None:
            if not isinstance(bid, str) or len(bid) > 255 or bid in ids:
                errs.append("block_id must be unique and <= 255")
            ids.add(str(bid))
        t = b.get("type")
        if t == "header":
            errs += _text_obj(b.get("text"), ["plain_text"], 150)
        elif t == "section":
            if "text" not in b and "fields" not in b:
                errs.append("section needs text or fields")
            if "text" in b:
                errs += _text_obj(b["text"], ["plain_text", "mrkdwn"], 3000)
            fields = b.get("fields", [])
            if not isinstance(fields, list) or len(fields) > 10:
                errs.append("section fields: at most 10")
            for f in fields if isinstance(fields, list) else []:
                errs += _text_obj(f, ["plain_text", "mrkdwn"], 2000)
        elif t == "context":
            els = b.get("elements")
            if not isinstance(els, list) or not 1 <= len(els) <= 10:
                errs.append("context needs 1-10 elements")
            for e in els if isinstance(els, list) else []:
                errs += _text_obj(e, ["plain_text", "mrkdwn"], 3000)
        elif t == "actions":
            els = b.get("elements")
            if not isinstance(els, list) or not 1 <= len(els) <= 25:
                errs.append("actions needs 1-25 elements")
            aids: set[str] = set()
            for e in els if isinstance(els, list) else []:
                if not isinstance(e, dict) or e.get("type") != "button":
                    errs.append("only buttons are expected here")
                    continue
                errs += _text_obj(e.get("text"), ["plain_text"], 75)
                aid = e.get("action_id")
                if not isinstance(aid, str) or len(aid) > 255 or aid in aids:
                    errs.append("action_id must be unique and <= 255")
                aids.add(str(aid))
                if "url" in e and (not isinstance(e["url"], str) or len(e["url"]) > 3000):
                    errs.append("button url must be <= 3000")
                if "style" in e and e["style"] not in ("primary", "danger"):
                    errs.append("button style must be primary or danger")
                if "value" in e and (not isinstance(e["value"], str) or len(e["value"]) > 2000):
                    errs.append("button value must be <= 2000")
        elif t != "divider":
            errs.append(f"unknown block type {t!r}")
    return errs


def slack() -> FakeAPI:
    def validate(req: Request) -> Reply:
        if req.method != "POST" or req.path != "/services/T000/B000/XXXX":
            return 404, b"no_service", {"content-type": "text/html"}
        try:
            doc = req.json()
        except ValueError:
            return 400, b"invalid_payload", {}
        if not isinstance(doc, dict):
            return 400, b"invalid_payload", {}
        if not doc.get("text") and not doc.get("blocks"):
            return 400, b"no_text", {}
        if slack_errors(doc):
            return 400, b"invalid_blocks", {}
        return 200, b"ok", {"content-type": "text/html"}

    return FakeAPI(validate)


SLACK_PATH = "/services/T000/B000/XXXX"


# -- Webhook receiver (Standard Webhooks + CloudEvents) --------------------------------------
def receiver(secrets: Sequence[str]) -> FakeAPI:
    keys = [stdwebhooks.decode_secret(s) for s in secrets]

    def validate(req: Request) -> Reply:
        try:
            stdwebhooks.verify(req.headers, req.body, keys, now=time.time())
        except stdwebhooks.WebhookVerificationError as exc:
            return 401, str(exc).encode(), {}
        if req.headers.get("content-type") != "application/cloudevents+json":
            return 415, b"expected application/cloudevents+json", {}
        ce = req.json()
        if ce.get("specversion") != "1.0" or not all(isinstance(ce.get(k), str) for k in ("id", "source", "type")):
            return 400, b"not a CloudEvent 1.0", {}
        return 204, b"", {}

    return FakeAPI(validate)
