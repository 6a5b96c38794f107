"""poet.toml and POET_* validation (exit 78, one line naming file, line, key and range), `config show`,
and the single source of truth for ranges and defaults (configspec vs dataclasses, CLI options, envelope)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from poetctl.config import load_config

EX_CONFIG = 78
ROOT = Path(__file__).resolve().parent.parent


def assert_config_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 78, exactly one stderr line, no traceback, and every fragment in it."""
    assert r.returncode == EX_CONFIG, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def config_error(tmp_path: Path, text: str | bytes) -> Any:
    """The ConfigError load_config raises for a poet.toml holding ``text``."""
    from poetctl.errors import ConfigError

    path = tmp_path / "poet.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.exit_code == EX_CONFIG
    assert "\n" not in str(info.value)
    return info.value


# -- the issue's examples, through real commands --------------------------------------------


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ("max_attempts = 0", ["[daemon] max_attempts = 0", "an integer from 1 to"]),
        ("backoff_base = -5", ["[daemon] backoff_base = -5", "a number from 0 to"]),
        ('workers = "four"', ["[daemon] workers = 'four'", "an integer from 1 to 256"]),
        ("rescan_interval = -1", ["[daemon] rescan_interval = -1", "a number from 0.05 to"]),
    ],
)
def test_issue_examples_exit_78_before_the_daemon_starts(
    run_cli: Any, tmp_path: Path, sp: Path, line: str, fragments: list[str]
) -> None:
    """`daemon --once` with each bad [daemon] value from the issue exits 78 with one line naming file:line and range."""
    cfg = tmp_path / "poet.toml"
    cfg.write_text(f"# daemon settings\n[daemon]\n{line}\n")
    r = run_cli("daemon", "--once", "--spool", sp, "--config", cfg)
    assert_config_error(r, f"{cfg}:3:", *fragments)
    assert "daemon" not in r.stdout
    assert not list((sp / "run").rglob("*.json")), "no daemon may have started (no heartbeat)"


@pytest.mark.parametrize(
    "argv",
    [
        ["config", "show"],
        ["emit", "system.health", "p.json"],  # emit's typer-free fast path
        ["emit", "--batch", "p.json", "--type", "system.health"],
        ["validate", "p.json", "--type", "system.health"],
        ["status"],
        ["tail"],
        ["fsck"],
        ["daemon", "--once"],
        ["dead", "list"],
        ["init"],
    ],
)
def test_every_command_refuses_a_bad_config_with_78(run_cli: Any, tmp_path: Path, sp: Path, argv: list[str]) -> None:
    """Every command loads poet.toml at start-up and refuses a bad value with 78 and one line, writing nothing."""
    (tmp_path / "p.json").write_text('{"service": "s", "status": "healthy"}\n')
    (tmp_path / "poet.toml").write_text(f'storage_path = "{sp}"\n[daemon]\nmax_attempts = 0\n')
    r = run_cli(*argv)
    assert_config_error(r, "poet.toml:3:", "[daemon] max_attempts = 0")
    assert not list((sp / "events" / "pending").iterdir())


def test_invalid_toml_names_file_and_line(run_cli: Any, tmp_path: Path) -> None:
    """A TOML syntax error gives one line `FILE:LINE: invalid TOML: ...` and exit 78 (it was 65)."""
    (tmp_path / "poet.toml").write_text('environment = "prod"\n\n[daemon\nworkers = 2\n')
    r = run_cli("config", "show")
    assert_config_error(r, "poet.toml:3:", "invalid TOML")


def test_unknown_key_is_refused_with_a_suggestion(run_cli: Any, tmp_path: Path) -> None:
    """A typo'd key is refused with 78, naming the line, the section and the closest known key."""
    (tmp_path / "poet.toml").write_text("[daemon]\nworkers = 2\nmax_attempt = 3\n")
    r = run_cli("config", "show")
    assert_config_error(r, "poet.toml:3:", "unknown key [daemon] max_attempt", "did you mean max_attempts?")


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("POET_MAX_EVENT_BYTES", "abc", "an integer from 256 to"),
        ("POET_MAX_EVENT_BYTES", "100", "an integer from 256 to"),
        ("POET_MAX_EVENT_BYTES", "99999999999", "an integer from 256 to"),
        ("POET_VALIDATION", "maybe", "true or false"),
        ("POET_DELIVERY_MODE", "carrier-pigeon", "one of 'local_only'"),
        ("POET_ENVIRONMENT", "x" * 65, "1 to 64 characters"),
        ("POET_SOURCE", "a\x1b[2Jb", "1 to 256 characters"),
    ],
)
def test_bad_environment_variables_exit_78(run_cli: Any, name: str, value: str, fragment: str) -> None:
    """A POET_* variable outside its key's range exits 78 naming the variable and the range (same table as the file)."""
    r = run_cli("config", "show", env={name: value})
    assert_config_error(r, name, fragment)
    assert "\x1b" not in r.stderr, "the bad value is quoted escaped, never raw"


def test_env_range_error_on_emit_fast_path(run_cli: Any, sp: Path) -> None:
    """`emit` (typer-free fast path) checks POET_* too: a tiny POET_MAX_EVENT_BYTES exits 78, nothing written."""
    r = run_cli("emit", "--spool", sp, "system.health", "-", input='{"service":"s","status":"healthy"}',
                env={"POET_MAX_EVENT_BYTES": "10"})  # fmt: skip
    assert_config_error(r, "POET_MAX_EVENT_BYTES", "from 256 to")
    assert not list((sp / "events" / "pending").iterdir())


def test_boundary_values_are_accepted(run_cli: Any, tmp_path: Path, sp: Path) -> None:
    """The smallest allowed values (and integers for float keys) are accepted: the daemon runs them (exit 0)."""
    (tmp_path / "poet.toml").write_text(
        "[daemon]\nworkers = 1\nmax_attempts = 1\nbackoff_base = 0\nbackoff_cap = 0\nrescan_interval = 0.05\n"
        'heartbeat_interval = 1\nlease_seconds = 2\npartition_key = "type"\nmover_backlog = -1\n'
        'max_causation_depth = 0\n[status]\nmax_lag = 90\nwarn_lag = "30s"\n'
    )
    r = run_cli("daemon", "--once", "--spool", sp, "--no-builtin-handlers")
    assert r.returncode == 0, r.stderr


# -- the whole table, in-process -------------------------------------------------------------

BAD_VALUES = [
    ("[daemon]\nrescan_interval = 0", "[daemon] rescan_interval"),
    ("[daemon]\nheartbeat_interval = nan", "[daemon] heartbeat_interval"),
    ("[daemon]\nhealth_interval = inf", "[daemon] health_interval"),
    ("[daemon]\nlease_seconds = -1", "[daemon] lease_seconds"),
    ("[daemon]\nheartbeat_interval = 30", "must be greater than heartbeat_interval"),
    ("[daemon]\nworkers = 1.5", "[daemon] workers"),
    ("[daemon]\nworkers = true", "[daemon] workers"),
    ("[daemon]\nworkers = 100000", "[daemon] workers"),
    ("[daemon]\nwindow = 0", "[daemon] window"),
    ("[daemon]\nmax_inflight = 0", "[daemon] max_inflight"),
    ("[daemon]\nbackoff_cap = 1e300", "[daemon] backoff_cap"),
    ("[daemon]\nmax_attempts = 2.0", "[daemon] max_attempts"),
    ("[daemon]\nonce = 1", "[daemon] once"),
    ('[daemon]\nwatch = "no"', "[daemon] watch"),
    ("[daemon]\nmover_backlog = -2", "[daemon] mover_backlog"),
    ("[daemon]\nmax_causation_depth = -1", "[daemon] max_causation_depth"),
    ("[daemon]\npartition_key = []", "[daemon] partition_key"),
    ('[daemon]\npartition_key = ["payload."]', "[daemon] partition_key"),
    ('[daemon]\npartition_key = ["timestampz"]', "[daemon] partition_key"),
    ("[learning]\nfp_rate_threshold = 2", "[learning] fp_rate_threshold"),
    ("[learning]\nmin_samples = 0", "[learning] min_samples"),
    ("[learning]\nwindow_days = -3", "[learning] window_days"),
    ("[learning]\nmin_sample = 3", "unknown key [learning] min_sample"),
    ('[builtin_handlers]\ndrift_detected = "no"', "[builtin_handlers] drift_detected"),
    ("[builtin_handlers]\nno_such_handler = false", "unknown key [builtin_handlers] no_such_handler"),
    ("[status]\nmax_dead = -1", "[status] max_dead"),
    ('[status]\nmax_lag = "soon"', "[status] max_lag"),
    ("[status]\nwarn_lag = -5", "[status] warn_lag"),
    ("[status]\nmax_stales = 1", "unknown key [status] max_stales"),
    ("max_event_bytes = 10", "max_event_bytes"),
    ('max_event_bytes = "1MiB"', "max_event_bytes"),
    ('delivery_mode = "smoke"', "delivery_mode"),
    ('environment = ""', "environment"),
    ("service = 3", "service"),
    ('source = "a\\u0007b"', "source"),
    ('handlers = "my.mod"', "handlers"),
    ("storage_path = 5", "storage_path"),
    ('persistence_enabled = "yes"', "persistence_enabled"),
    ('colour = "blue"', "unknown key colour"),
    ('[event_schemas]\nversion = "../1"', "[event_schemas] version"),
    ('[event_schemas]\nvalidation = "false"', "[event_schemas] validation"),
    ('[event_schemas]\npaths = "schemas"', "[event_schemas] paths"),
    ("[event_schemas]\nvalidate = false", "unknown key [event_schemas] validate"),
    ("daemon = 5", "expected a table [daemon]"),
    ("nats = 5", "[nats] must be a table"),
    ("[external_integrations]\npagerduty = 5", "[external_integrations] pagerduty"),
    ('[external_integrations.slack]\nenabled = "yes"', "[external_integrations.slack] enabled"),
    ("[unknown_table]\nx = 1", "unknown key unknown_table"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_VALUES)
def test_every_key_is_checked(tmp_path: Path, text: str, fragment: str) -> None:
    """Each section and key of poet.toml is checked: a wrong type, range or name raises ConfigError naming it."""
    err = config_error(tmp_path, "# poet.toml\n" + text + "\n")
    assert fragment in str(err)
    assert str(tmp_path / "poet.toml") in str(err)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b'source = "\xff"\n', "not UTF-8"),
        (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
        (b"# " + b"x" * (2 * 1024 * 1024) + b"\n", "larger than"),
    ],
)
def test_hostile_files_are_refused_without_a_traceback(tmp_path: Path, data: bytes, fragment: str) -> None:
    """Non-UTF-8, absurdly nested or huge config files raise ConfigError, never RecursionError or a memory blow-up."""
    assert fragment in str(config_error(tmp_path, data))


def test_error_line_number_points_at_the_key(tmp_path: Path) -> None:
    """The error names the line of the bad key inside its own section, not a same-named key elsewhere."""
    text = "[status]\nmax_dead = 1\n\n[learning]\nmin_samples = 3\n[daemon]\nworkers = 2\nmax_attempts = 0\n"
    assert str(config_error(tmp_path, text)).startswith(f"{tmp_path / 'poet.toml'}:8: ")


def test_free_form_tables_keep_their_keys(tmp_path: Path) -> None:
    """[nats] and integration tables of a kind poetctl does not know keep their keys as given."""
    path = tmp_path / "poet.toml"
    path.write_text(
        '[nats]\nservers = ["nats://a:4222"]\n[external_integrations.chat]\nenabled = true\nchannel = "#x"\n'
    )
    cfg = load_config(path, env={})
    assert cfg.nats == {"servers": ["nats://a:4222"]}
    assert cfg.integrations == {"chat": {"enabled": True, "channel": "#x"}}


def test_env_overrides_file_with_the_same_checks(tmp_path: Path) -> None:
    """POET_* overrides the file's value and records its origin; the file's value is still checked."""
    path = tmp_path / "poet.toml"
    path.write_text("max_event_bytes = 4096\n[event_schemas]\nvalidation = true\n")
    cfg = load_config(path, env={"POET_MAX_EVENT_BYTES": "8192", "POET_VALIDATION": "off"})
    assert (cfg.max_event_bytes, cfg.validation) == (8192, False)
    assert cfg.origins["max_event_bytes"] == "POET_MAX_EVENT_BYTES"
    assert cfg.origins["event_schemas.validation"] == "POET_VALIDATION"


# -- config show ----------------------------------------------------------------------------


def test_config_show_prints_every_default_and_origin(run_cli: Any, tmp_path: Path) -> None:
    """`config show` fills in every effective default (not `"daemon": {}`) and says default / file / env per key."""
    (tmp_path / "poet.toml").write_text(
        '[daemon]\nworkers = 2\n[learning]\nmin_samples = 7\n[external_integrations.pagerduty]\napi_key = "env:PD"\n'
    )
    r = run_cli("config", "show", env={"POET_ENVIRONMENT": "prod", "PD": "s3cr3t"})
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    from poetctl.configspec import SECTIONS, defaults

    assert shown["daemon"] == {**defaults("daemon"), "workers": 2}
    assert shown["learning"] == {**defaults("learning"), "min_samples": 7}
    assert shown["builtin_handlers"] == defaults("builtin_handlers")
    assert shown["status"] == defaults("status")
    assert shown["environment"] == "prod"
    origins = shown["origins"]
    assert origins["daemon.workers"] == "file"
    assert origins["daemon.max_attempts"] == "default"
    assert origins["learning.min_samples"] == "file"
    assert origins["environment"] == "POET_ENVIRONMENT"
    assert origins["config_file"] == "./poet.toml"
    assert origins["external_integrations"] == "file"
    every = {f"{s}.{k}" if s else k for s, spec in SECTIONS.items() for k in spec}
    assert every <= set(origins)
    assert "s3cr3t" not in r.stdout
    assert shown["external_integrations"]["pagerduty"]["api_key"] == "env:PD (set)"


def test_config_show_without_any_file(run_cli: Any) -> None:
    """With no poet.toml, `config show` still prints every default with origin `default`."""
    r = run_cli("config", "show")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["config_file"] is None
    assert shown["daemon"]["rescan_interval"] == 5.0
    assert shown["daemon"]["partition_key"] == ["payload.function_name", "correlation_id", "type"]
    assert set(shown["origins"].values()) == {"default"}


# -- one source of truth ---------------------------------------------------------------------


def _dataclass_defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def test_defaults_agree_with_the_dataclasses() -> None:
    """configspec's keys and defaults are exactly those of DaemonOptions, LearningSettings, HandlerSwitches, status."""
    from poetctl.cli.status import STATUS_DEFAULTS
    from poetctl.configspec import SECTIONS, defaults
    from poetctl.daemon.core import DaemonOptions
    from poetctl.handlers.learning import LearningSettings
    from poetctl.handlers.ml_monitoring import HandlerSwitches

    daemon = _dataclass_defaults(DaemonOptions)
    assert set(daemon) <= set(SECTIONS["daemon"]), "every DaemonOptions field needs a [daemon] key in configspec"
    assert {k: defaults("daemon")[k] for k in daemon} == daemon
    assert defaults("learning") == _dataclass_defaults(LearningSettings)
    assert defaults("builtin_handlers") == _dataclass_defaults(HandlerSwitches)
    assert defaults("status") == STATUS_DEFAULTS
    from poetctl.config import Config

    top = Config()
    for key in ("environment", "service", "source", "delivery_mode", "max_event_bytes"):
        assert defaults("")[key] == getattr(top, key)
    assert Path(defaults("")["storage_path"]) == top.spool


def test_cli_option_ranges_come_from_the_table() -> None:
    """Every command-line option that sets a config key has exactly the key's min/max (daemon, status)."""
    import typer.main

    from poetctl.cli import build_app
    from poetctl.configspec import SECTIONS

    options = {
        ("daemon", "--workers"): ("daemon", "workers"),
        ("daemon", "--rescan-interval"): ("daemon", "rescan_interval"),
        ("status", "--max-dead"): ("status", "max_dead"),
        ("status", "--max-corrupt"): ("status", "max_corrupt"),
        ("status", "--max-stale"): ("status", "max_stale"),
        ("status", "--min-daemons"): ("status", "min_daemons"),
    }
    group: Any = typer.main.get_command(build_app())
    for (command, opt), (section, key) in options.items():
        cmd = group.commands[command]
        param = next(p for p in cmd.params if opt in p.opts)
        s = SECTIONS[section][key]
        assert (getattr(param.type, "min", None), getattr(param.type, "max", None)) == (s.lo, s.hi), opt


def test_string_limits_agree_with_the_envelope_schema() -> None:
    """environment/service/source lengths and the version pattern are those of schemas/envelope.json."""
    from poetctl.configspec import SECTIONS

    props = json.loads((ROOT / "schemas" / "envelope.json").read_text())["properties"]
    meta = props["metadata"]["properties"]
    top = SECTIONS[""]
    for key, schema in (
        ("environment", meta["environment"]),
        ("service", meta["service"]),
        ("source", props["source"]),
    ):
        assert (top[key].lo, top[key].hi) == (schema["minLength"], schema["maxLength"]), key
    assert "^" + SECTIONS["event_schemas"]["version"].pattern + "$" == meta["version"]["pattern"]


def test_daemon_options_from_config_checks_library_callers() -> None:
    """DaemonOptions.from_config refuses an out-of-range value or unknown key with ConfigError (was accepted)."""
    from poetctl.daemon.core import DaemonOptions
    from poetctl.errors import ConfigError

    with pytest.raises(ConfigError, match="rescan_interval"):
        DaemonOptions.from_config({"rescan_interval": -1})
    with pytest.raises(ConfigError, match="max_attempts"):
        DaemonOptions.from_config({"max_attempts": 0})
    with pytest.raises(ConfigError, match="did you mean workers"):
        DaemonOptions.from_config({"worker": 2})
    opts = DaemonOptions.from_config({"partition_key": "type", "rescan_interval": 2}, workers=3, once=None)
    assert (opts.partition_key, opts.rescan_interval, opts.workers, opts.once) == (("type",), 2.0, 3, False)


def test_cli_workers_above_the_table_maximum_is_a_usage_error(run_cli: Any, sp: Path) -> None:
    """`daemon --workers 300` is outside [daemon] workers' range: exit 2 (a bad option), daemon not started."""
    r = run_cli("daemon", "--once", "--spool", sp, "--workers", "300")
    assert r.returncode == 2, r.stderr
    assert "300" in r.stderr


def test_loading_config_stays_cheap() -> None:
    """load_config imports no TOML parser without a file, and no schema library, difflib or ops module with one."""
    code = (
        "import sys, pathlib, tempfile\n"
        "from poetctl.config import load_config\n"
        "load_config(env={})\n"
        "print('tomllib' in sys.modules)\n"
        "d = pathlib.Path(tempfile.mkdtemp()); p = d / 'poet.toml'\n"
        "p.write_text('[daemon]\\nworkers = 2\\n[learning]\\nmin_samples = 3\\n')\n"
        "load_config(p, env={'POET_MAX_EVENT_BYTES': '4096'})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jsonschema', 'jsonschema_rs', 'difflib')"
        " or m.startswith(('poetctl.ops', 'poetctl.daemon', 'poetctl.backends.fs'))))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert r.stdout.split("\n")[:2] == ["False", "[]"], r.stdout


def test_hostile_key_names_are_escaped_in_the_error(run_cli: Any, tmp_path: Path) -> None:
    """A quoted TOML key holding terminal escapes is refused with the key escaped, never written raw to stderr."""
    (tmp_path / "poet.toml").write_text('[daemon]\n"\\u001b]0;pwned\\u0007" = 1\n')
    r = run_cli("config", "show")
    assert_config_error(r, "unknown key [daemon] '\\x1b]0;pwned\\x07'")
    assert "\x1b" not in r.stderr


@pytest.mark.parametrize("target", ["directory", "/dev/zero"])
def test_config_that_is_not_a_file_is_refused(run_cli: Any, tmp_path: Path, target: str) -> None:
    """--config naming a directory or an endless device exits 78 with one line (not 66 'does not exist', not a hang)."""
    path = tmp_path if target == "directory" else Path(target)
    r = run_cli("--config", path, "config", "show")
    assert_config_error(r, str(path))


def test_a_byte_limit_can_be_gigabytes(tmp_path: Path) -> None:
    """[limits] max_pending_bytes takes byte-sized numbers (1 GB), not the generic 10,000,000 cap."""
    from poetctl.config import load_config

    p = tmp_path / "poet.toml"
    p.write_text("[limits]\nmax_pending_bytes = 1000000000\n")
    assert load_config(p, env={}).limits["max_pending_bytes"] == 1_000_000_000
