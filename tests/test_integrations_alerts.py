"""Alerts leave the spool: a real `poetctl daemon --once` sends PagerDuty, Slack and signed webhooks to real servers."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fakeapis import SLACK_PATH, FakeAPI, pagerduty, receiver, serve, slack

from poetctl import EventRouter
from poetctl.backends.fs.layout import SpoolLayout
from poetctl.cloudevents import from_cloudevent
from poetctl.integrations import stdwebhooks
from poetctl.integrations.links import verify as verify_link

ROUTING_KEY = "R0UT1NGKEY0123456789abcdef012345"  # 32 characters, like a PagerDuty integration key
FEEDBACK_SECRET = "feedback-secret-for-tests"
HOOK_OLD = "whsec_" + base64.b64encode(b"o" * 24).decode()
HOOK_NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
ENV = {
    "PD_ROUTING_KEY": ROUTING_KEY,
    "POET_FEEDBACK_SECRET": FEEDBACK_SECRET,
    "HOOK_OLD": HOOK_OLD,
    "HOOK_NEW": HOOK_NEW,
}


class Stage:
    """A spool, poet.toml pointing at the stand-ins, and the stand-ins themselves."""

    def __init__(self, root: Path, pd: FakeAPI, sl: FakeAPI, hook: FakeAPI, extra: str = "") -> None:
        self.root = root
        self.spool = root / "spool"
        SpoolLayout(self.spool).init()
        self.pd, self.slack, self.hook = pd, sl, hook
        self.config = root / "poet.toml"
        self.config.write_text(
            f"""storage_path = "spool"
[daemon]
max_attempts = 2
backoff_base = 0
backoff_cap = 0
[serve]
public_url = "https://poet.example.com/"
feedback_secret = "env:POET_FEEDBACK_SECRET"
[integrations.pagerduty]
enabled = true
routing_key = "env:PD_ROUTING_KEY"
url = "{pd.url}/v2/enqueue"
[integrations.slack]
enabled = true
webhook_url = "env:SLACK_WEBHOOK_URL"
[integrations.audit]
type = "webhook"
enabled = true
url = "{hook.url}/hooks/poet"
secrets = ["env:HOOK_NEW", "env:HOOK_OLD"]
types = ["alert.*", "feedback.*"]
read_timeout = 2
{extra}"""
        )
        self.env = {**ENV, "SLACK_WEBHOOK_URL": sl.url + SLACK_PATH}

    def router(self) -> EventRouter:
        return EventRouter(spool=self.spool)

    def events(self, etype: str) -> list[dict[str, Any]]:
        out = []
        for state in ("processed", "pending", "dead"):
            d = self.spool / "events" / state
            for p in sorted(d.glob("*.json")):
                ev = json.loads(p.read_text())
                if ev["type"] == etype:
                    out.append(ev)
        return out


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[Stage]:
    with ExitStack() as stack:
        pd = stack.enter_context(serve(pagerduty()))
        sl = stack.enter_context(serve(slack()))
        hook = stack.enter_context(serve(receiver([HOOK_OLD])))  # the receiver still has only the old secret
        yield Stage(tmp_path, pd, sl, hook)


def daemon_once(run_cli: Any, st: Stage) -> Any:
    return run_cli("daemon", "--once", "--config", st.config, env=st.env, cwd=st.root)


def drift(samples: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**samples["drift.detected"]["valid"][0], **extra}


def test_drift_pages_pagerduty_posts_slack_and_signs_webhooks(run_cli: Any, stage: Stage, samples: Any) -> None:
    """drift.detected -> alert -> a valid PD trigger, a Block Kit message with two signed buttons, CloudEvents."""
    drift_id = stage.router().emit("drift.detected", drift(samples), correlation_id="drift-alert-123")
    r = daemon_once(run_cli, stage)
    assert r.returncode == 0, r.stderr

    # PagerDuty: one trigger, accepted by the schema check (202), with the seed's fields.
    (trig,) = stage.pd.wait_for(1)
    assert trig.reply == 202, trig.body
    ev = trig.json()
    assert ev["event_action"] == "trigger" and ev["routing_key"] == ROUTING_KEY
    assert ev["dedup_key"] == "drift-alert-123"
    p = ev["payload"]
    assert p["source"] == "customer_churn_model"
    assert p["severity"] == "critical"  # seed: score 0.82 > 0.8 and p 0.004 < 0.01
    assert "customer_churn_model" in p["summary"] and "user_activity_score" in p["summary"]
    assert "0.820" in p["summary"]
    cd = p["custom_details"]
    assert cd["poet_execution_id"] == samples["drift.detected"]["valid"][0]["execution_id"]
    assert cd["drift_score"] == 0.82
    link = urlsplit(cd["feedback_url"])
    assert (link.scheme, link.netloc, link.path) == ("https", "poet.example.com", f"/poet/feedback/{drift_id}")
    token = parse_qs(link.query)["t"][0]
    verify_link(token, drift_id, secrets=[FEEDBACK_SECRET.encode()], now=float(token.split(".")[0]) - 1)
    assert ev["links"][0]["href"] == cd["feedback_url"]

    # The answer became alert.created_external with the dedup key, in the alert's correlation.
    (created,) = stage.events("alert.created_external")
    assert created["payload"] == {
        "external_id": "drift-alert-123",
        "poet_execution_id": cd["poet_execution_id"],
        "system": "pagerduty",
    }
    assert created["correlation_id"] == "drift-alert-123"
    (alert,) = stage.events("alert.create_external")
    assert created["causation_id"] == alert["id"]

    # Slack: Block Kit accepted (200 ok), model/feature/score/severity/priority, two preselecting buttons.
    (msg,) = stage.slack.wait_for(1)
    assert msg.reply == 200, msg.body
    doc = msg.json()
    text = json.dumps(doc)
    for needle in ("customer_churn_model", "user_activity_score", "0.820", "critical", "*Priority*\\nmedium"):
        assert needle in text
    (actions,) = [b for b in doc["blocks"] if b["type"] == "actions"]
    buttons = {b["text"]["text"]: urlsplit(b["url"]) for b in actions["elements"]}
    assert set(buttons) == {"Real drift", "False alarm"}
    for label, answer in (("Real drift", "real_drift"), ("False alarm", "false_alarm")):
        q = parse_qs(buttons[label].query)
        assert q["answer"] == [answer]
        assert buttons[label].path == f"/poet/feedback/{drift_id}"
        verify_link(q["t"][0], drift_id, secrets=[FEEDBACK_SECRET.encode()], now=float(q["t"][0].split(".")[0]) - 1)

    # Webhook: both alert events, CloudEvents signed with both secrets; the receiver (old secret only) accepted.
    hooks = stage.hook.wait_for(2)
    assert [h.reply for h in hooks] == [204, 204], [h.body for h in hooks]
    types = sorted(from_cloudevent(h.json())["type"] for h in hooks)
    assert types == ["alert.create_external", "alert.created_external"]
    for h in hooks:
        assert len(h.headers["webhook-signature"].split(" ")) == 2
        assert h.headers["webhook-id"] == h.json()["id"].replace(".", "~")
        keys = [stdwebhooks.decode_secret(HOOK_NEW)]
        stdwebhooks.verify(h.headers, h.body, keys, now=int(h.headers["webhook-timestamp"]))


def test_resolution_resolves_the_incident(run_cli: Any, stage: Stage, samples: Any) -> None:
    """feedback.alert_resolved in the alert's correlation sends a resolve with that dedup key (not when PD told us)."""
    router = stage.router()
    router.emit("drift.detected", drift(samples), correlation_id="drift-alert-9")
    assert daemon_once(run_cli, stage).returncode == 0
    resolved = {
        "execution_id": "x1",
        "resolution_type": "false_alarm",
        "resolution_time_minutes": 3,
        "was_useful": False,
    }
    router.emit("feedback.alert_resolved", resolved, correlation_id="drift-alert-9")
    router.emit("feedback.alert_resolved", resolved, correlation_id="drift-alert-9", source="external.pagerduty")
    r = daemon_once(run_cli, stage)
    assert r.returncode == 0, r.stderr
    reqs = stage.pd.wait_for(2)
    assert [q.json()["event_action"] for q in reqs] == ["trigger", "resolve"]
    assert reqs[1].reply == 202
    assert reqs[1].json() == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "drift-alert-9"}


def test_a_4xx_from_pagerduty_is_a_dead_letter_with_its_answer(run_cli: Any, stage: Stage, samples: Any) -> None:
    """PagerDuty refusing the event (400) dead-letters the alert at once, with PagerDuty's error in it."""
    stage.pd.fail(400, b'{"status":"invalid event","errors":["routing key unknown"]}')
    stage.router().emit("drift.detected", drift(samples), correlation_id="drift-alert-4")
    r = daemon_once(run_cli, stage)
    assert r.returncode == 1, r.stderr
    (dead,) = stage.events("alert.create_external")
    err = (stage.spool / "events" / "dead" / f"{dead['id']}.error").read_text()
    assert "routing key unknown" in err and "permanent" in err
    assert len(stage.pd.answered()) == 1  # permanent: no retry


@pytest.mark.parametrize("flags", [[], ["--all-handlers"]], ids=["finished-kept", "all-handlers"])
def test_a_webhook_down_loses_nothing_and_dead_retry_resends(
    run_cli: Any, stage: Stage, samples: Any, flags: list[str]
) -> None:
    """Receiver down: dead letters; `dead retry` resends only to it (Slack not twice); --all-handlers reruns all."""
    stage.hook.fail(500, b"down", times=100)
    stage.router().emit("drift.detected", drift(samples), correlation_id="drift-alert-7")
    r = daemon_once(run_cli, stage)
    assert r.returncode == 1, r.stderr  # dead-lettered after max_attempts = 2
    dead = sorted(p.name for p in (stage.spool / "events" / "dead").glob("*.json"))
    assert len(dead) == 2  # alert.create_external and alert.created_external
    assert len(stage.pd.answered()) == 1 and len(stage.slack.answered()) == 1
    stage.hook.queued.clear()  # the receiver is back
    r = run_cli("dead", "retry", "--all", *flags, "--config", stage.config, env=stage.env, cwd=stage.root)
    assert r.returncode == 0, r.stderr
    r = daemon_once(run_cli, stage)
    assert r.returncode == 0, r.stderr
    delivered = [h for h in stage.hook.answered() if h.reply == 204]
    assert sorted(f"{h.json()['id']}.json" for h in delivered) == dead
    assert not list((stage.spool / "events" / "dead").glob("*.json"))
    assert not list((stage.spool / "events" / "records").glob("*.json"))  # nothing left behind
    if flags:
        # Every handler of the alert again: PagerDuty gets the same dedup key (no second incident), Slack posts again.
        assert len(stage.slack.answered()) == 2 and len(stage.pd.answered()) == 2
        assert {q.json()["dedup_key"] for q in stage.pd.answered()} == {"drift-alert-7"}
    else:
        # Only the webhook had not finished: PagerDuty and Slack are not called again.
        assert len(stage.slack.answered()) == 1 and len(stage.pd.answered()) == 1


def test_replay_from_dead_still_reruns_every_handler(run_cli: Any, stage: Stage, samples: Any) -> None:
    """`replay --from dead` keeps its meaning: every handler runs again (Slack gets the message a second time)."""
    stage.hook.fail(500, b"down", times=100)
    stage.router().emit("drift.detected", drift(samples), correlation_id="drift-alert-8")
    assert daemon_once(run_cli, stage).returncode == 1
    stage.hook.queued.clear()
    r = run_cli("replay", "--from", "dead", "--all", "--config", stage.config, env=stage.env, cwd=stage.root)
    assert r.returncode == 0, r.stderr
    assert daemon_once(run_cli, stage).returncode == 0
    assert len(stage.slack.answered()) == 2


def test_an_unset_secret_stops_the_daemon_with_a_config_error(run_cli: Any, stage: Stage) -> None:
    """An enabled integration whose env: secret is unset: exit 78 naming the key and variable, nothing handled."""
    env = {k: v for k, v in stage.env.items() if k != "PD_ROUTING_KEY"}
    r = run_cli("daemon", "--once", "--config", stage.config, env=env, cwd=stage.root)
    assert r.returncode == 78
    assert "routing_key = env:PD_ROUTING_KEY" in r.stderr and "not set" in r.stderr
    assert ROUTING_KEY not in r.stderr
    assert os.path.isdir(stage.spool)


def test_an_unset_feedback_secret_stops_the_daemon(run_cli: Any, stage: Stage) -> None:
    """[serve] public_url set but its feedback_secret variable unset: exit 78 naming [serve] feedback_secret."""
    env = {k: v for k, v in stage.env.items() if k != "POET_FEEDBACK_SECRET"}
    r = run_cli("daemon", "--once", "--config", stage.config, env=env, cwd=stage.root)
    assert r.returncode == 78, r.stderr
    assert "[serve] feedback_secret" in r.stderr and "POET_FEEDBACK_SECRET" in r.stderr
    assert r.stderr.count("\n") == 1
