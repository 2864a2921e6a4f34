"""Settings and the servers' options: one home for each default, help text and variable.

The options of `tm scheduler | coordinator | worker | dev` are made from the settings
dataclasses (tm.settings); the rules between values are the settings' own, so a test or
`tm dev` cannot build what `tm coordinator` refuses, and the CLI answers a broken rule with
a usage error (exit 2). Commands run here with their service replaced by one that records
the settings it was given.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import tm.cli
import tm.coordinator.service
import tm.scheduler.processes
import tm.worker.service
from tm.cli import main
from tm.settings import (
    CoordinatorSettings,
    SchedulerSettings,
    SettingsError,
    WorkerSettings,
)

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SERVERS = {
    "scheduler": SchedulerSettings,
    "coordinator": CoordinatorSettings,
    "worker": WorkerSettings,
}
NEW_OPTIONS = {
    "coordinator": {"--scan-interval": "scan_interval_s", "--max-claim": "max_claim",
                    "--retry-base": "retry_base_s", "--retry-cap": "retry_cap_s",
                    "--push-timeout": "push_timeout_s", "--pool-size": "pool_size"},
    "scheduler": {"--pool-size": "pool_size"},
    "worker": {"--report-batch": "report_batch", "--report-flush": "report_flush_s",
               "--rpc-timeout": "rpc_timeout_s"},
}


def options_of(name: str) -> list[click.Option]:
    command = main.commands[name]
    return [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]


@pytest.fixture(autouse=True)
def keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """`tm` configures logging to the stderr of the moment, CliRunner's: not here."""
    monkeypatch.setattr(tm.cli.logs, "configure", lambda: None)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The settings each server command hands its service (which then returns at once)."""
    got: list[Any] = []

    async def record(settings: Any, **_kwargs: Any) -> None:
        got.append(settings)

    monkeypatch.setattr(tm.scheduler.processes, "serve_processes", record)
    monkeypatch.setattr(tm.coordinator.service, "serve_coordinator", record)
    monkeypatch.setattr(tm.worker.service, "serve_worker", record)
    for key in [k for k in os.environ if k.startswith("TM_")]:
        monkeypatch.delenv(key)
    return got


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.mark.parametrize("command", [*SERVERS, "dev"])
def test_every_option_shows_its_variable_and_default(command: str) -> None:
    for option in options_of(command):
        if option.is_flag:
            continue
        assert option.show_envvar and isinstance(option.envvar, str | list), option.name
        assert option.show_default not in (None, False), f"{command} {option.opts}: no default"
    text = " ".join(invoke(command, "--help").output.split())
    assert text.count("env var: TM_") == len(options_of(command)), text


@pytest.mark.parametrize(("command", "cls"), SERVERS.items())
def test_option_defaults_are_the_settings_defaults(command: str, cls: type) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    derived = [o for o in options_of(command) if o.name in defaults]
    assert len(derived) >= 4, derived
    for option in derived:
        assert option.default == defaults[option.name], option.name


def test_the_settings_built_by_each_server_command_are_its_defaults(served: list[Any]) -> None:
    for command, cls in SERVERS.items():
        result = invoke(command)
        assert result.exit_code == 0, result.output
        assert served.pop() == cls(), command


@pytest.mark.parametrize("command", NEW_OPTIONS)
def test_options_that_were_settings_only_have_flags_and_variables(
    served: list[Any], command: str
) -> None:
    options = NEW_OPTIONS[command]
    values = {flag: "7" for flag in options}
    if command == "coordinator":
        values["--retry-cap"] = "9"
    if command == "worker":
        values["--report-flush"] = "0.5"
    args = [part for flag, value in values.items() for part in (flag, value)]
    assert invoke(command, *args).exit_code == 0
    by_flag = served.pop()
    env = {"TM_" + flag[2:].replace("-", "_").upper(): value for flag, value in values.items()}
    assert invoke(command, env=env).exit_code == 0
    by_env = served.pop()
    for flag, field in options.items():
        expected = float(values[flag])
        assert getattr(by_flag, field) == getattr(by_env, field) == expected, flag
        assert f"`{env_name(flag)}`" in README, f"{env_name(flag)} is not in the README"


def env_name(flag: str) -> str:
    return "TM_" + flag[2:].replace("-", "_").upper()


def test_every_server_variable_is_in_the_readme() -> None:
    for command in [*SERVERS, "dev"]:
        for option in options_of(command):
            names = [option.envvar] if isinstance(option.envvar, str) else option.envvar
            for name in names:
                assert re.search(rf"`{name}`", README), f"{name} ({command}) not in the README"


def test_the_contract_spelling_of_the_lease_works(served: list[Any]) -> None:
    """DESIGN.md names `--lease-s` / `TM_LEASE_S`; `--lease` / `TM_LEASE` stay."""
    for args, env in ((["--lease-s", "41"], {}), ([], {"TM_LEASE_S": "41"}),
                      (["--lease", "41"], {}), ([], {"TM_LEASE": "41"})):
        assert invoke("coordinator", *args, env=env).exit_code == 0
        assert served.pop().lease_s == 41.0, (args, env)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lease", "5"], "--lease must be longer than --heartbeat-timeout"),
        (["--heartbeat-interval", "6"],
         "--heartbeat-interval must be shorter than --heartbeat-timeout"),
        (["--retry-base", "10", "--retry-cap", "5"],
         "--retry-cap must not be shorter than --retry-base"),
    ],
)
def test_rules_between_options_are_usage_errors(
    served: list[Any], args: list[str], message: str
) -> None:
    result = CliRunner().invoke(main, ["coordinator", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert served == []


def test_the_same_rules_hold_for_settings_built_in_code() -> None:
    """What `tm dev` and tests build is checked like the command line."""
    with pytest.raises(SettingsError, match="--lease must be longer"):
        CoordinatorSettings(heartbeat_timeout_s=5.0, lease_s=5.0)
    with pytest.raises(SettingsError, match="--heartbeat-interval must be shorter"):
        CoordinatorSettings(heartbeat_interval_s=2.0, heartbeat_timeout_s=2.0)
    with pytest.raises(SettingsError, match="--concurrency"):
        WorkerSettings(concurrency=0)
    with pytest.raises(SettingsError, match="--executor"):
        WorkerSettings(executor="bash")
    with pytest.raises(SettingsError, match="--http-addr"):
        SchedulerSettings(http_addr="8081")
    with pytest.raises(SettingsError, match="--processes"):
        SchedulerSettings(processes=65)
    with pytest.raises(SettingsError, match="--report-flush"):
        WorkerSettings(report_flush_s=float("nan"))
    assert CoordinatorSettings(heartbeat_timeout_s=60.0, lease_s=300.0).lease_s == 300.0


def test_an_empty_token_is_no_token() -> None:
    # An empty TM_API_TOKEN must not make "Authorization: Bearer " a valid header.
    assert SchedulerSettings(api_token="").api_token is None
    assert SchedulerSettings(api_token="s3cret").api_token == "s3cret"
