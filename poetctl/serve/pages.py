"""HTML of the feedback page: small, accessible (labels, fieldsets with legends, an error summary), no script.

Everything shown that comes from an event or a form is made terminal-safe
(:func:`poetctl.safetext.clean`) and then HTML-escaped, attributes included.
The responses forbid scripts, framing and referrers (the URL carries the
link's token) and are never cached.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..safetext import clean
from .feedback import CONFIDENCE, Alert, Answer

if TYPE_CHECKING:
    from starlette.responses import HTMLResponse

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
ANSWER_LABELS = {"real_drift": "Real drift", "false_alarm": "False alarm"}
CONFIDENCE_LABELS = {"high": "Sure", "medium": "Fairly sure", "low": "Not sure"}
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;line-height:1.5}"
    "dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}dt{font-weight:600}"
    "fieldset{margin:1rem 0;border:1px solid #888;padding:.5rem 1rem}label{display:block;margin:.25rem 0}"
    "textarea,input[type=number]{width:100%;box-sizing:border-box;font:inherit}"
    ".error{color:#a00000;font-weight:600}button{font:inherit;padding:.5rem 1.5rem;margin-top:1rem}"
)


def e(value: Any) -> str:
    """``value`` safe inside HTML text or a quoted attribute."""
    return html.escape(clean("" if value is None else value), quote=True)


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    from starlette.responses import HTMLResponse

    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} - poetctl</title><style>{STYLE}</style></head>"
        f'<body><main id="main">{body}</main></body></html>\n'
    )
    return HTMLResponse(doc, status_code=status, headers=HEADERS)


def message(title: str, text: str, status: int) -> HTMLResponse:
    """A page that only explains something (a refused link, an unknown alert)."""
    return page(title, f'<h1>{e(title)}</h1><p id="message">{e(text)}</p>', status)


def alert_details(alert: Alert) -> str:
    score = alert.field("drift_score")
    rows = [
        ("Model", alert.field("model_name")),
        ("Feature", alert.field("feature_name")),
        ("Drift score", f"{score:.3f}" if isinstance(score, int | float) else score),
        ("Severity", alert.field("severity")),
        ("Priority", alert.field("investigation_priority")),
        ("Function", alert.field("function_name")),
    ]
    items = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in rows if v is not None)
    ts = alert.event.timestamp
    iso = datetime.fromtimestamp(ts, UTC).isoformat()
    items += f'<dt>When</dt><dd><time datetime="{e(iso)}">{e(when(ts))}</time></dd>'
    items += f"<dt>Alert</dt><dd><code>{e(alert.event.id)}</code></dd>"
    return f'<section aria-labelledby="alert-h"><h2 id="alert-h">The alert</h2><dl id="alert">{items}</dl></section>'


def form(link_id: str, token: str, alert: Alert, answer: Answer, status: int = 200) -> HTMLResponse:
    errs = answer.errors or {}

    def err(name: str) -> str:
        return f'<p class="error" id="{name}-error">{e(errs[name])}</p>' if name in errs else ""

    def described(name: str) -> str:
        return f' aria-describedby="{name}-error" aria-invalid="true"' if name in errs else ""

    summary = ""
    if errs:
        items = "".join(f'<li><a href="#{k}-first">{e(v)}</a></li>' for k, v in errs.items())
        summary = f'<div role="alert" id="errors" tabindex="-1"><h2>Please check your answer</h2><ul>{items}</ul></div>'
    radios = "".join(
        f'<label><input type="radio" name="answer" value="{v}" id="answer-{v}"'
        f"{' checked' if answer.answer == v else ''} required{described('answer')}> {e(label)}</label>"
        for v, label in ANSWER_LABELS.items()
    )
    sure = "".join(
        f'<label><input type="radio" name="confidence" value="{v}" id="confidence-{v}"'
        f"{' checked' if answer.confidence == v else ''}{described('confidence')}>"
        f" {e(label)} ({CONFIDENCE[v]:g})</label>"
        for v, label in CONFIDENCE_LABELS.items()
    )
    body = (
        f"<h1>Was this real drift?</h1>{summary}{alert_details(alert)}"
        f'<form method="post" action="{e(quote(link_id, safe=""))}" id="feedback">'
        f'<input type="hidden" name="t" value="{e(token)}">'
        f'<fieldset id="answer-first"><legend>Was this real drift?</legend>{err("answer")}{radios}</fieldset>'
        f'<label for="reason" id="reason-first">Why? What did you check?</label>{err("reason")}'
        f'<textarea id="reason" name="reason" rows="4" maxlength="4000" required{described("reason")}>'
        f"{e(answer.reason)}</textarea>"
        f'<label for="minutes" id="minutes-first">Time spent investigating (minutes)</label>{err("minutes")}'
        f'<input type="number" id="minutes" name="minutes" min="0" step="any" inputmode="decimal" required '
        f'value="{e(answer.minutes)}"{described("minutes")}>'
        f'<fieldset id="confidence-first"><legend>How sure are you?</legend>{err("confidence")}{sure}</fieldset>'
        '<button type="submit" id="submit">Send answer</button></form>'
    )
    return page("Was this real drift?", body, status)


def thanks(alert: Alert, answer: Answer) -> HTMLResponse:
    body = (
        '<h1 id="thanks">Thank you</h1>'
        f"<p>Your answer, <strong>{e(ANSWER_LABELS[answer.answer])}</strong>, was recorded for this alert "
        f"and goes to the learning engine.</p>{alert_details(alert)}"
    )
    return page("Thank you", body)


def already(alert: Alert, previous: Any | None) -> HTMLResponse:
    said = ""
    if previous is not None:
        p = previous.payload
        label = ANSWER_LABELS["real_drift" if p.get("was_real_drift") else "false_alarm"]
        said = f" on {e(when(previous.timestamp))}: <strong>{e(label)}</strong>"
    body = (
        '<h1 id="already">This alert was already answered</h1>'
        f"<p>Someone answered it{said}. Only the first answer counts, so yours was not recorded.</p>"
        f"{alert_details(alert)}"
    )
    return page("Already answered", body, 409)
