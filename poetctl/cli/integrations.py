"""``poetctl integrations check`` and ``poetctl mlflow sync``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from .common import ConfigOpt, OutputOpt, SpoolOpt, errors_to_exit, load

integrations_app = typer.Typer(help="External integrations (PagerDuty, Slack, webhooks, MLflow).", no_args_is_help=True)
mlflow_app = typer.Typer(help="MLflow tracking server: feedback from tagged runs.", no_args_is_help=True)


@integrations_app.command("check")
def check_cmd(output: OutputOpt = None, spool: SpoolOpt = None, config: ConfigOpt = None) -> None:
    """Try each configured integration's endpoint once and print what works.

    Nothing is paged or posted: PagerDuty gets a resolve for a key no alert
    has, Slack an empty message (which it refuses), a webhook a signed
    poetctl.ping, MLflow an experiment search, the feedback page GET /healthz.
    Each line also shows the endpoint's circuit breaker. Exit 0 all work, 1
    some failed (a missing secret is a failed row), 78 the configuration is invalid.
    """
    raise typer.Exit(_check(output, spool, config))


@errors_to_exit
def _check(output: str | None, spool: Path | None, config: Path | None) -> int:
    from ..integrations.settings import unknown_kinds
    from ..integrations.wiring import check_all
    from .output import clean, emit_rows, resolve_format

    cfg = load(spool, config)
    fmt = resolve_format(output)
    results = check_all(cfg)
    for name in unknown_kinds(cfg):
        sys.stderr.write(f"poetctl: [external_integrations.{clean(name)}]: unknown kind (no type = ...), ignored\n")
    if not results:
        sys.stderr.write("poetctl: no integrations configured ([external_integrations.<name>] in poet.toml)\n")
    rows = [
        {
            "name": r.name,
            "kind": r.kind,
            "ok": r.ok,
            "breaker": (r.breaker or {}).get("state", "-"),
            "detail": r.detail,
        }
        for r in results
    ]
    emit_rows(fmt, ["name", "kind", "ok", "breaker", "detail"], rows, title="Integrations")
    return 0 if all(r.ok for r in results) else 1


@mlflow_app.command("sync")
def sync_cmd(spool: SpoolOpt = None, config: ConfigOpt = None) -> None:
    """Turn MLflow runs tagged drift_false_positive / drift_confirmed into feedback.mlflow_validation events.

    Safe to run from cron: a run already reported is deduplicated by its
    event id (mlflow-<run id>-<verdict>). Prints the ids of the events.
    Exit 0 done, 1 some runs were skipped (reason on stderr), 69 the
    tracking server cannot be reached, 78 no enabled [external_integrations.mlflow].
    """
    raise typer.Exit(_sync(spool, config))


@errors_to_exit
def _sync(spool: Path | None, config: Path | None) -> int:
    from ..errors import ConfigError
    from ..integrations.mlflow import MLflowIntegration, report
    from ..integrations.settings import integrations
    from ..integrations.wiring import outbound_for
    from ..router import EventRouter

    cfg = load(spool, config)
    its = [it for it in integrations(cfg) if it.kind == "mlflow" and it.enabled]
    if not its:
        raise ConfigError("no enabled MLflow integration: add [external_integrations.mlflow] with enabled = true")
    router = EventRouter(config=cfg, create_spool=False)
    code = 0
    for it in its:
        out = outbound_for(it, router.layout)
        try:
            res = MLflowIntegration(router, it, out).sync()
        finally:
            out.close()
        report(res)
        for eid in res.emitted:
            sys.stdout.write(eid + "\n")
        sys.stderr.write(f"poetctl: mlflow sync ({it.name}): {res.runs} tagged run(s), {len(res.emitted)} verdict(s)\n")
        if res.skipped:
            code = 1
    return code
