"""The whole integrations story on one machine: stand-in PagerDuty and Slack, a real ``poetctl serve``, real daemons.

One poet.toml joins them, as a user would write it: ``[serve]`` (the page's
server) owns the feedback links (``public_url``, ``feedback_secret``) and the
PagerDuty webhook secret; the PagerDuty and Slack integrations point at the
stand-ins (:mod:`poetctl.standins`, which validate each request as the real
API does). ``poetctl serve`` listens on a free port, so ``public_url`` is
written once it is known (serve itself does not read it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from conftest import clean_env, cli_argv
from fakeapis import SLACK_PATH, FakeAPI, pagerduty, serve, slack
from serve_harness import FEEDBACK_SECRET, PD_SECRETS, TOKENS, Server, spool_events

ROUTING_KEY = "R0UT1NGKEY0123456789abcdef012345"  # 32 characters, like a PagerDuty integration key
WAIT = 120.0  # only bounds how long a broken process can hang a test
SERVE_TABLE = (
    'token = "env:POET_TEST_TOKEN_A"\n'
    'feedback_secret = "env:POET_TEST_FEEDBACK"\n'
    'pagerduty_secret = ["env:POET_TEST_PD_NEW", "env:POET_TEST_PD_OLD"]\n'
)
DRIFT = {
    "function_name": "detect_drift",
    "model_name": "customer_churn_model",
    "feature_name": "user_activity_score",
    "drift_score": 0.82,
    "method": "ks_test",
    "statistical_significance": 0.004,
    "data_characteristics": {"sample_size": 10000, "data_type": "continuous", "missing_values_percent": 0.0},
}


class Story:
    """The stand-ins, ``poetctl serve`` and poet.toml; :meth:`daemon_once` / :meth:`start_daemon` run daemons."""

    def __init__(self, root: Path, stack: ExitStack) -> None:
        self.root = root
        self.pd: FakeAPI = stack.enter_context(serve(pagerduty()))
        self.slack: FakeAPI = stack.enter_context(serve(slack()))
        integrations = (
            "[daemon]\nbackoff_base = 0.05\nbackoff_cap = 0.2\nrescan_interval = 0.5\nheartbeat_interval = 0.5\n"
            '[integrations.pagerduty]\nenabled = true\nrouting_key = "env:PD_ROUTING_KEY"\n'
            f'url = "{self.pd.url}/v2/enqueue"\n'
            '[integrations.slack]\nenabled = true\nwebhook_url = "env:SLACK_WEBHOOK_URL"\n'
        )
        self.server = Server(root, SERVE_TABLE + integrations)
        stack.callback(self.server.stop)
        self.spool = self.server.spool
        self.config = root / "poet.toml"
        text = self.config.read_text(encoding="utf-8")
        self.config.write_text(text.replace("[serve]\n", f'[serve]\npublic_url = "{self.server.url}"\n', 1))
        self.env = clean_env(
            {
                **TOKENS,
                **PD_SECRETS,
                "POET_TEST_FEEDBACK": FEEDBACK_SECRET,
                "PD_ROUTING_KEY": ROUTING_KEY,
                "SLACK_WEBHOOK_URL": self.slack.url + SLACK_PATH,
            }
        )
        self.daemons: list[subprocess.Popen[str]] = []
        stack.callback(self.stop_daemons)

    # -- daemons ------------------------------------------------------------------------------
    def daemon_once(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cli_argv("daemon", "--once", "--config", self.config),
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )

    def start_daemon(self) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            cli_argv("daemon", "--config", self.config),
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.daemons.append(p)
        return p

    def stop_daemons(self) -> None:
        for p in self.daemons:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            if p.stderr is not None:
                p.stderr.close()

    # -- what happened ------------------------------------------------------------------------
    def events(self, etype: str | None = None) -> list[dict[str, Any]]:
        return spool_events(self.spool, etype)

    def processed(self, etype: str) -> list[dict[str, Any]]:
        out = []
        for p in sorted((self.spool / "events" / "processed").rglob("*.json")):
            d = json.loads(p.read_text(encoding="utf-8"))
            if d["type"] == etype:
                out.append(d)
        return out

    def wait_until(self, what: str, ready: Any, timeout: float = WAIT) -> Any:
        """Poll the observable ``ready()`` until it is truthy (a broken daemon fails the test, never hangs it)."""
        deadline = time.monotonic() + timeout
        while True:
            got = ready()
            if got:
                return got
            for p in self.daemons:
                assert p.poll() is None, f"the daemon exited {p.returncode} while waiting for {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def emit(self, etype: str, payload: dict[str, Any], **envelope: Any) -> str:
        """Emit through ``POST /events`` (the bearer token of [serve] token); returns the id."""
        import httpx

        body = json.dumps({"type": etype, "payload": payload, **envelope})
        r = httpx.post(
            self.server.url + "/events",
            content=body,
            headers={"authorization": f"Bearer {TOKENS['POET_TEST_TOKEN_A']}", "content-type": "application/json"},
        )
        assert r.status_code == 200, r.text
        [eid] = r.json()["ids"]
        return str(eid)


def buttons(message: dict[str, Any]) -> dict[str, str]:
    """``{"Real drift": url, "False alarm": url}`` of a Slack Block Kit message."""
    out: dict[str, str] = {}
    for block in message["blocks"]:
        for el in block.get("elements", []):
            if el.get("type") == "button":
                out[el["text"]["text"]] = el["url"]
    return out


def link_id(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[-1]


def token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["t"][0]


def pd_webhook(secret: str, incident_key: str, pd_id: str) -> tuple[bytes, dict[str, str]]:
    """A PagerDuty v3 ``incident.resolved`` delivery, signed as PagerDuty signs it (``v1=<hex HMAC-SHA256>``)."""
    body = json.dumps(
        {
            "event": {
                "id": pd_id,
                "event_type": "incident.resolved",
                "resource_type": "incident",
                "occurred_at": "2026-01-01T00:45:30.000Z",
                "agent": {"id": "PUSER01", "type": "user_reference"},
                "data": {
                    "id": "Q1INCIDENT",
                    "type": "incident",
                    "status": "resolved",
                    "incident_key": incident_key,
                    "created_at": "2026-01-01T00:00:00Z",
                    "title": "Model drift",
                },
            }
        }
    ).encode()
    sig = "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {"content-type": "application/json", "x-pagerduty-signature": sig}
