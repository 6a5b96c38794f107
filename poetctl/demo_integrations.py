"""``make demo-integrations``: the integrations story against local stand-ins, printing where each call went.

1. start stand-ins on 127.0.0.1 for PagerDuty (Events API v2), Slack
   (incoming webhook) and a webhook receiver (Standard Webhooks), each
   checking requests as the real service does (:mod:`poetctl.standins`);
2. write one poet.toml: ``[serve]`` (the feedback page's address, link and
   webhook secrets), the three integrations pointing at the stand-ins;
3. start ``poetctl serve`` and ``poetctl daemon``;
4. post three drift detections to ``POST /events``; the daemon pages
   PagerDuty and posts to Slack;
5. a person answers each alert "False alarm" on the feedback page, over HTTP,
   from the link in the Slack message; the learning engine spots the pattern
   and asks for regeneration (the receiver gets the pattern, signed), and the
   "generator" (this script) answers with ``enhancement.regenerated``;
6. PagerDuty's signed v3 ``incident.resolved`` webhook reaches serve and
   becomes ``feedback.alert_resolved``;
7. print the chain (``poetctl correlate``), stop everything, exit 0.

Secrets are random per run and passed as ``env:`` references.
``python -m poetctl.demo_integrations [DIR] [--keep]`` (default ``.poet/demo-integrations``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .standins import SLACK_PATH, FakeAPI, Request, pagerduty, receiver, serve, slack

N = 3  # [learning] min_samples in the demo's poet.toml: three false alarms make a pattern
DRIFT = {
    "function_name": "detect_drift",
    "model_name": "customer_churn_model",
    "feature_name": "user_activity_score",
    "method": "ks_test",
    "data_characteristics": {"sample_size": 10000, "data_type": "continuous", "missing_values_percent": 0.0},
}
WAIT = 60.0


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def call(method: str, where: str, path: str, status: int, summary: str) -> None:
    """One line per call: method, who received it, the status it got, what it said."""
    print(f"  {method:<4} {where:<13} {path[:51]:<51} {status:>3}  {summary}", flush=True)


def _wait(what: str, ready: Callable[[], Any], procs: dict[str, subprocess.Popen[bytes]]) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        got = ready()
        if got:
            return got
        for name, p in procs.items():
            if p.poll() is not None:
                raise SystemExit(f"demo: poetctl {name} exited {p.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _summary(name: str, req: Request) -> str:
    try:
        doc = req.json()
    except ValueError:
        return f"{len(req.body)} bytes"
    if name == "PagerDuty":
        text = doc.get("payload", {}).get("summary", "")
        return f"{doc.get('event_action')} dedup_key={doc.get('dedup_key')}" + (f' "{text}"' if text else "")
    if name == "Slack":
        labels = [
            el["text"]["text"] for b in doc.get("blocks", []) if b.get("type") == "actions" for el in b["elements"]
        ]
        return f'"{doc.get("text", "")[:60]}..." buttons: {", ".join(labels)}'
    sigs = len(req.headers.get("webhook-signature", "").split())
    return (
        f"CloudEvent {doc.get('type')} (webhook-id {req.headers.get('webhook-id', '?')[:13]}..., {sigs} signature(s))"
    )


class Calls:
    """Prints what each stand-in received since the last look, in arrival order."""

    def __init__(self, standins: dict[str, FakeAPI]) -> None:
        self.standins = standins
        self.seen = dict.fromkeys(standins, 0)

    def show(self) -> None:
        for name, api in self.standins.items():
            got = api.answered()
            for req in got[self.seen[name] :]:
                call(req.method, name, req.path, req.reply, _summary(name, req))
            self.seen[name] = len(got)


def _processed(spool: Path, etype: str) -> list[dict[str, Any]]:
    out = []
    for p in sorted((spool / "events" / "processed").rglob("*.json")):
        d = json.loads(p.read_text(encoding="utf-8"))
        if d["type"] == etype:
            out.append(d)
    return out


def _config(port: int, pd: FakeAPI, hook: FakeAPI) -> str:
    return f"""storage_path = "spool"

[daemon]
rescan_interval = 0.5

[learning]
min_samples = {N}

[serve]
port = {port}
public_url = "http://127.0.0.1:{port}"             # where people reach the feedback page
token = "env:POET_DEMO_TOKEN"                      # bearer token of POST /events
feedback_secret = "env:POET_DEMO_FEEDBACK_SECRET"  # signs the links in Slack/PagerDuty; the page verifies
pagerduty_secret = "env:POET_DEMO_PD_WEBHOOK_SECRET"

[external_integrations.pagerduty]
enabled = true
routing_key = "env:POET_DEMO_PD_ROUTING_KEY"
url = "{pd.url}/v2/enqueue"

[external_integrations.slack]
enabled = true
webhook_url = "env:POET_DEMO_SLACK_WEBHOOK_URL"

[external_integrations.audit]
type = "webhook"
enabled = true
url = "{hook.url}/hooks/poet"
secrets = ["env:POET_DEMO_HOOK_SECRET"]
types = ["learning.pattern_detected", "feedback.alert_resolved"]
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    keep = "--keep" in args
    args = [a for a in args if a != "--keep"]
    root = Path(args[0] if args else ".poet/demo-integrations").absolute()
    if root.exists() and not keep:
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    import base64

    import httpx

    from .backends.fs.layout import SpoolLayout

    hook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POET_")}
    env.update(
        POET_DEMO_TOKEN=secrets.token_urlsafe(24),
        POET_DEMO_FEEDBACK_SECRET=secrets.token_urlsafe(32),
        POET_DEMO_PD_WEBHOOK_SECRET=secrets.token_urlsafe(24),
        POET_DEMO_PD_ROUTING_KEY=secrets.token_hex(16),  # 32 characters, like an Events API v2 integration key
        POET_DEMO_HOOK_SECRET=hook_secret,
    )
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with ExitStack() as stack:
        pd = stack.enter_context(serve(pagerduty()))
        sl = stack.enter_context(serve(slack()))
        hook = stack.enter_context(serve(receiver([hook_secret])))
        env["POET_DEMO_SLACK_WEBHOOK_URL"] = sl.url + SLACK_PATH
        calls = Calls({"PagerDuty": pd, "Slack": sl, "webhook": hook})
        port = _free_port()
        config = root / "poet.toml"
        config.write_text(_config(port, pd, hook), encoding="utf-8")
        spool = root / "spool"
        SpoolLayout(spool).init()
        say(f"stand-ins: PagerDuty {pd.url}, Slack {sl.url}, webhook receiver {hook.url}; config {config}")

        def start(*cmd: str) -> subprocess.Popen[bytes]:
            argv_ = [sys.executable, "-m", "poetctl", cmd[0], "--config", str(config), *cmd[1:]]
            p = subprocess.Popen(argv_, cwd=root, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs[cmd[0]] = p
            return p

        def stop() -> None:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(30)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()

        stack.callback(stop)
        start("serve")
        base = f"http://127.0.0.1:{port}"
        _wait("poetctl serve", lambda: _get_ok(httpx, base + "/healthz"), procs)
        start("daemon")
        say(f"poetctl serve on {base}, poetctl daemon running")

        say(f"{N} drift detections of detect_drift on customer_churn_model, posted to poetctl serve")
        lines = [
            json.dumps(
                {
                    "type": "drift.detected",
                    "payload": {
                        **DRIFT,
                        "execution_id": f"exec-{i}",
                        "drift_score": 0.6 + i / 10,
                        "statistical_significance": 0.004,
                    },
                    "correlation_id": f"drift-alert-{i}",
                }
            )
            for i in range(N)
        ]
        auth = {"authorization": f"Bearer {env['POET_DEMO_TOKEN']}", "content-type": "application/x-ndjson"}
        r = httpx.post(base + "/events", content="\n".join(lines), headers=auth)
        call("POST", "poetctl serve", "/events", r.status_code, f"{N} drift.detected, added {r.json().get('added')}")
        _wait("the alerts in PagerDuty and Slack", lambda: len(pd.answered()) >= N and len(sl.answered()) >= N, procs)
        calls.show()

        say("the on-call person opens each Slack message's 'False alarm' button and answers on the page")
        for req in sl.answered()[:N]:
            url = _button(req.json(), "False alarm")
            page = httpx.get(url)
            path = urlsplit(url).path
            call("GET", "poetctl serve", path, page.status_code, "the feedback page, 'False alarm' preselected")
            form = {"t": parse_qs(urlsplit(url).query)["t"][0], "answer": "false_alarm", "minutes": "10"}
            form["reason"] = "weekly promo traffic; the feature recovers after it"
            r = httpx.post(url.split("?")[0], data=form)
            call("POST", "poetctl serve", path, r.status_code, "answer recorded" if 'id="thanks"' in r.text else "?")
        regen = _wait("regeneration_needed", lambda: _processed(spool, "enhancement.regeneration_needed"), procs)[0]
        # Both follow from the answer that completed the pattern (its causation).
        cause = regen["causation_id"]
        pattern = _wait(
            "the pattern",
            lambda: [p for p in _processed(spool, "learning.pattern_detected") if p["causation_id"] == cause],
            procs,
        )[0]
        print(f"  learning.pattern_detected {pattern['payload']['pattern_type']}: regeneration needed")
        _wait("the pattern at the webhook receiver", lambda: hook.answered(), procs)
        calls.show()

        say("the generator ships detect_drift 1.1.0 (POST /events)")
        regenerated = {
            "function_name": "detect_drift",
            "old_version": "1.0.0",
            "new_version": "1.1.0",
            "regeneration_reason": pattern["payload"]["pattern_type"],
            "improvements": ["raise drift threshold to 0.7"],
            "expected_impact": {"false_positive_reduction": 0.6, "accuracy_improvement": 0.05, "cost_reduction": 0.3},
        }
        doc = {"type": "enhancement.regenerated", "payload": regenerated, "source": "poet.generator"}
        doc |= {"correlation_id": regen["correlation_id"], "causation_id": regen["id"]}
        r = httpx.post(base + "/events", json=doc, headers={"authorization": auth["authorization"]})
        call("POST", "poetctl serve", "/events", r.status_code, "enhancement.regenerated 1.0.0 -> 1.1.0")

        [human] = [e for e in _processed(spool, "feedback.human_validation") if e["id"] == regen["causation_id"]]
        corr = human["correlation_id"]
        say(f"PagerDuty: the responder resolves incident {corr}; its signed v3 webhook goes to poetctl serve")
        body = json.dumps(_incident_resolved(corr)).encode()
        secret = env["POET_DEMO_PD_WEBHOOK_SECRET"].encode()
        sig = "v1=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        headers = {"content-type": "application/json", "x-pagerduty-signature": sig}
        r = httpx.post(base + "/webhooks/pagerduty", content=body, headers=headers)
        call(
            "POST",
            "poetctl serve",
            "/webhooks/pagerduty",
            r.status_code,
            "incident.resolved -> feedback.alert_resolved",
        )
        _wait(
            "the resolution at the webhook receiver",
            lambda: any(b'"feedback.alert_resolved"' in q.body for q in hook.answered()),
            procs,
        )
        calls.show()

        say(f"the chain of {corr}: poetctl correlate {corr}")
        out = subprocess.run(
            [sys.executable, "-m", "poetctl", "correlate", corr, "-o", "tree", "--config", str(config)],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        print(out.stdout.rstrip())
        stop()
        codes = [p.returncode for p in procs.values()]
    say(f"serve and daemon stopped (exit {codes}). Explore: cd {root} && poetctl status; poetctl correlate {corr}")
    return 0 if codes == [0, 0] and out.returncode == 0 else 1


def _get_ok(httpx: Any, url: str) -> bool:
    try:
        return bool(httpx.get(url, timeout=2).status_code == 200)
    except httpx.TransportError:
        return False


def _button(message: dict[str, Any], label: str) -> str:
    for block in message["blocks"]:
        for el in block.get("elements", []):
            if el.get("type") == "button" and el["text"]["text"] == label:
                return str(el["url"])
    raise SystemExit(f"demo: no {label!r} button in the Slack message")


def _incident_resolved(incident_key: str) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    pd_id = "01" + re.sub(r"[^A-Z0-9]", "", secrets.token_hex(6).upper())
    return {
        "event": {
            "id": pd_id,
            "event_type": "incident.resolved",
            "resource_type": "incident",
            "occurred_at": now,
            "data": {
                "id": "Q0DEMO",
                "type": "incident",
                "status": "resolved",
                "incident_key": incident_key,
                "created_at": now,
                "title": "Model drift",
            },
        }
    }


if __name__ == "__main__":
    raise SystemExit(main())
