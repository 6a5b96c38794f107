"""Integration settings in poet.toml: checked keys, the [integrations] alias, masked secrets, `integrations check`."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fakeapis import SLACK_PATH, FakeAPI, pagerduty, receiver, refused_url, serve, slack

from poetctl.config import load_config
from poetctl.errors import ConfigError
from poetctl.integrations.settings import FeedbackLinks, integrations

HOOK = "whsec_" + base64.b64encode(b"k" * 24).decode()


def config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "poet.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return str(info.value)


BAD = [
    ('[external_integrations.pagerduty]\nrouting_kye = "env:X"\n', "unknown key [external_integrations.pagerduty] "),
    ('[external_integrations.pagerduty]\nrouting_kye = "env:X"\n', "did you mean routing_key?"),
    ("[external_integrations.pagerduty]\nenabled = true\n", "sets no routing_key or api_key"),
    ('[external_integrations.slack]\nenabled = true\nwebhook_url = "env:1BAD"\n', "webhook_url = 'env:1BAD'"),
    ('[external_integrations.hook]\ntype = "webhook"\nenabled = true\nurl = "ftp://x"\n', "url = 'ftp://x'"),
    ('[external_integrations.hook]\ntype = "webhook"\nenabled = true\nurl = "http://x"\n', "sets no secrets"),
    ('[external_integrations.hook]\ntype = "webhook"\nsecrets = []\n', "a non-empty list of secrets"),
    ('[external_integrations.hook]\ntype = "carrier-pigeon"\n', "type = 'carrier-pigeon'"),
    ("[external_integrations.slack]\nread_timeout = 0\n", "read_timeout = 0: expected a number from 0.01"),
    ("[external_integrations.mlflow]\nenabled = true\n", "sets no tracking_uri"),
    ('[external_integrations.feedback]\nbase_url = "https://x"\n', "feedback links are configured in [serve]"),
    ('[integrations.links]\ntype = "feedback"\n', "[integrations.links]: feedback links are configured in [serve]"),
    ('[integrations.pagerduty]\nwebhook_secrets = ["env:X"]\n', "configured in [serve] pagerduty_secret"),
    ('[serve]\nfeedback_ttl = "soon"\n', "[serve] feedback_ttl = 'soon'"),
    ("[integrations.slack]\nbreaker_failures = 0\n", "[integrations.slack] breaker_failures"),
    ("[integrations.a]\nx = 1\n[external_integrations.b]\ny = 2\n", "are the same table"),
    ('[integrations."a b"]\ntype = "slack"\n', "an integration name is 1-64 letters"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD)
def test_integration_keys_are_checked(tmp_path: Path, text: str, fragment: str) -> None:
    """A typo, a wrong type or a missing required key of an integration is one ConfigError naming file and key."""
    msg = config_error(tmp_path, text)
    assert fragment in msg
    assert msg.startswith(str(tmp_path / "poet.toml"))
    assert "\n" not in msg


def test_the_cli_exits_78_on_a_bad_integration(run_cli: Any, tmp_path: Path) -> None:
    """`config show` (any command) refuses a bad integration table with one line and exit 78."""
    (tmp_path / "poet.toml").write_text("[integrations.pagerduty]\nenabled = true\n")
    r = run_cli("config", "show")
    assert r.returncode == 78
    assert r.stderr.count("\n") == 1 and "poet.toml:1" in r.stderr and "Traceback" not in r.stderr


def test_the_integrations_alias_and_defaults(tmp_path: Path) -> None:
    """[integrations.*] is read like [external_integrations.*]; every default is filled in."""
    path = tmp_path / "poet.toml"
    path.write_text('[integrations.slack]\nenabled = true\nwebhook_url = "env:SLACK"\n')
    cfg = load_config(path, env={})
    (it,) = integrations(cfg)
    assert (it.name, it.kind, it.enabled) == ("slack", "slack", True)
    assert it.get("read_timeout") == 15.0 and it.get("breaker_failures") == 5
    assert cfg.origins["external_integrations"] == "file"


def test_feedback_links_come_from_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """[serve] public_url/feedback_secret/feedback_ttl make the links; file: is relative to poet.toml, like serve's."""
    (tmp_path / "key").write_text("from-a-file\n")
    path = tmp_path / "poet.toml"
    path.write_text(
        '[serve]\npublic_url = "https://poet.example"\nfeedback_secret = ["env:FB_NEW", "file:key"]\n'
        'feedback_ttl = "2d"\n'
    )
    monkeypatch.setenv("FB_NEW", "from-env")
    links = FeedbackLinks.from_config(load_config(path, env={}))
    assert links is not None and links.secrets == (b"from-env", b"from-a-file") and links.ttl == 2 * 86400
    assert links.base_url == "https://poet.example"
    monkeypatch.delenv("FB_NEW")
    with pytest.raises(ConfigError, match=r"\[serve\] feedback_secret: environment variable FB_NEW is not set"):
        FeedbackLinks.from_config(load_config(path, env={}))


@pytest.mark.parametrize(
    ("serve", "fragment"),
    [
        ('public_url = "https://poet.example"\n', "[serve] feedback_secret is not"),
        ('public_url = "poet.example"\nfeedback_secret = "env:FB"\n', "public_url = 'poet.example': expected"),
        ('public_url = "https://poet.example"\nfeedback_secret = "file:nowhere"\n', "cannot read secret file"),
    ],
)
def test_feedback_links_refuse_a_half_configuration(tmp_path: Path, serve: str, fragment: str) -> None:
    """Links asked for (public_url) but unsignable or not a URL: one ConfigError naming the [serve] key."""
    path = tmp_path / "poet.toml"
    path.write_text(f"[serve]\n{serve}")
    with pytest.raises(ConfigError) as info:
        FeedbackLinks.from_config(load_config(path, env={}), env={"FB": "x"})
    assert fragment in str(info.value)


def test_no_public_url_means_no_links(tmp_path: Path) -> None:
    """Without [serve] public_url alerts keep the seed's relative feedback path (no signed links)."""
    path = tmp_path / "poet.toml"
    path.write_text('[serve]\nfeedback_secret = "env:FB"\n')
    assert FeedbackLinks.from_config(load_config(path, env={}), env={}) is None


def test_config_show_masks_every_secret(run_cli: Any, tmp_path: Path) -> None:
    """`config show` prints env:NAME (set/unset) and file:PATH, never a secret's value, literal ones included."""
    (tmp_path / "poet.toml").write_text(
        '[integrations.pagerduty]\nrouting_key = "env:PD"\n'
        '[integrations.slack]\nwebhook_url = "https://hooks.slack.com/services/T/B/literal"\n'
        '[integrations.hook]\ntype = "webhook"\nurl = "https://r.example"\n'
        'secrets = ["file:/etc/poet/hook", "whsec_lit"]\n'
    )
    r = run_cli("config", "show", env={"PD": "pd-secret-value"})
    assert r.returncode == 0, r.stderr
    assert "pd-secret-value" not in r.stdout and "literal" not in r.stdout and "whsec_lit" not in r.stdout
    shown = json.loads(r.stdout)["external_integrations"]
    assert shown["pagerduty"]["routing_key"] == "env:PD (set)"
    assert shown["hook"]["secrets"][0] == "file:/etc/poet/hook"


@pytest.fixture
def apis() -> Iterator[tuple[FakeAPI, FakeAPI, FakeAPI]]:
    with ExitStack() as stack:
        yield (
            stack.enter_context(serve(pagerduty())),
            stack.enter_context(serve(slack())),
            stack.enter_context(serve(receiver([HOOK]))),
        )


def test_integrations_check_reports_each_endpoint(run_cli: Any, tmp_path: Path, apis: Any) -> None:
    """`integrations check`: 0 when every endpoint works, 1 naming the one that does not; nothing is paged or posted."""
    pd, sl, hook = apis
    body = (
        f'[integrations.pagerduty]\nenabled = true\nrouting_key = "env:PD"\nurl = "{pd.url}/v2/enqueue"\n'
        f'[integrations.slack]\nenabled = true\nwebhook_url = "env:SLACK"\n'
        f'[integrations.hook]\ntype = "webhook"\nenabled = true\nurl = "{hook.url}/in"\nsecrets = ["env:HOOK"]\n'
    )
    (tmp_path / "poet.toml").write_text(body)
    env = {"PD": "R" * 32, "SLACK": sl.url + SLACK_PATH, "HOOK": HOOK}
    r = run_cli("integrations", "check", "-o", "json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert all(row["ok"] for row in rows.values()), rows
    assert pd.answered()[0].json()["event_action"] == "resolve" and pd.answered()[0].reply == 202
    assert sl.answered()[0].reply == 400  # the empty message Slack refuses: nothing was posted
    assert hook.answered()[0].reply == 204
    bad = (
        body
        + f'[integrations.down]\ntype = "webhook"\nenabled = true\nurl = "{refused_url()}"\nsecrets = ["env:HOOK"]\n'
    )
    (tmp_path / "poet.toml").write_text(bad)
    r = run_cli("integrations", "check", "-o", "json", env={**env, "SLACK": sl.url + "/services/wrong"})
    assert r.returncode == 1
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert not rows["down"]["ok"] and "cannot reach" in rows["down"]["detail"]
    assert not rows["slack"]["ok"] and "404" in rows["slack"]["detail"] and "wrong" not in rows["slack"]["detail"]
    assert rows["pagerduty"]["ok"] and rows["hook"]["ok"]


def test_integrations_check_reports_the_feedback_page(run_cli: Any, tmp_path: Path) -> None:
    """`integrations check` lists the feedback page ([serve] public_url): unreachable or unsignable is a failed row."""
    (tmp_path / "poet.toml").write_text(f'[serve]\npublic_url = "{refused_url()}"\nfeedback_secret = "env:FB"\n')
    r = run_cli("integrations", "check", "-o", "json", env={"FB": "s3cret"})
    assert r.returncode == 1, r.stdout + r.stderr
    [row] = json.loads(r.stdout)
    assert (row["name"], row["kind"], row["ok"]) == ("feedback", "feedback page", False)
    assert "cannot reach" in row["detail"]
    r = run_cli("integrations", "check", "-o", "json", env={})
    [row] = json.loads(r.stdout)
    assert not row["ok"] and "[serve] feedback_secret" in row["detail"] and r.returncode == 1


def test_webhook_type_and_topic_patterns(tmp_path: Path) -> None:
    """A webhook gets an event only when its type matches one of types and its topic one of topics (empty: any)."""
    from poetctl import EventRouter
    from poetctl.event import Event
    from poetctl.integrations.http import Outbound
    from poetctl.integrations.settings import Integration
    from poetctl.integrations.webhooks import WebhookIntegration

    def hook(**values: Any) -> WebhookIntegration:
        it = Integration("h", "webhook", True, {"url": "http://127.0.0.1:9", "secrets": [HOOK], **values})
        return WebhookIntegration(EventRouter(spool=tmp_path / "s"), it, Outbound("h"))

    def ev(etype: str, topic: str) -> Event:
        return Event(id="e1", type=etype, source="t", timestamp=1.0, topic=topic, payload={})

    a = hook(types=["drift.*", "alert.create_external"], topics=[])
    assert a.matches(ev("drift.detected", "x")) and a.matches(ev("alert.create_external", "x"))
    assert not a.matches(ev("alert.created_external", "x"))
    b = hook(types=[], topics=["poet/functions/detect_*"])
    assert b.matches(ev("function.execution", "poet/functions/detect_drift"))
    assert not b.matches(ev("function.execution", "poet/functions/other"))
    c = hook(types=["function.*"], topics=["poet/functions/detect_*"])
    assert not c.matches(ev("drift.detected", "poet/functions/detect_drift"))


def test_relative_file_secrets_of_integrations_are_read_beside_poet_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An integration's file:NAME secret is found next to poet.toml whatever the working directory."""
    from poetctl.integrations.settings import integrations

    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "routing").write_text("rk-from-file\n")
    path = conf / "poet.toml"
    path.write_text('[external_integrations.pagerduty]\nenabled = true\nrouting_key = "file:routing"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (pd,) = integrations(load_config(path, env={}))
    assert pd.secret("routing_key") == "rk-from-file"
