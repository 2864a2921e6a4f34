"""`tm schedules list | show | create | edit | pause | resume | delete | runs`.

Output and exit statuses as the task commands (tm.client.cli, tm.client.command): a
key/value block or a table for people, the API's document with `--json`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from tm.client import render
from tm.client.api import Client
from tm.client.command import (
    DEFAULT_PAGE,
    EXIT_CODES_HELP,
    MAX_PAGE,
    ApiGroup,
    client_options,
    emit_json,
    print_document,
    print_task_page,
    terminal_width,
)
from tm.core.tasks import MAX_ATTEMPTS_LIMIT, MAX_TIMEOUT_S, Status

F = Callable[..., Any]


def _schedule_options(*, editing: bool) -> Callable[[F], F]:
    """The fields of a schedule as options; when `editing`, only those given are sent."""

    def decorate(fn: F) -> F:
        options = [
            click.option("--timezone", "--tz", "timezone", envvar="TM_TIMEZONE",
                         show_envvar=True, default=None,
                         help="IANA time zone the cron fields are read in [API default: UTC]."),
            click.option("--max-attempts", envvar="TM_MAX_ATTEMPTS", show_envvar=True,
                         type=click.IntRange(1, MAX_ATTEMPTS_LIMIT), default=None,
                         help="Runs allowed if an execution fails [API default: 1]."),
            click.option("--timeout", "timeout_s", envvar="TM_TIMEOUT", show_envvar=True,
                         type=click.FloatRange(min=0, min_open=True, max=MAX_TIMEOUT_S),
                         default=None, help="Seconds an execution may take."),
            click.option("--at-most-once/--at-least-once", "at_most_once",
                         envvar="TM_AT_MOST_ONCE", show_envvar=True, default=None,
                         help="If its worker is lost, fail a run rather than run it again."),
            click.option("--overlap", envvar="TM_OVERLAP", show_envvar=True,
                         type=click.Choice(["allow", "skip"]), default=None,
                         help="skip: start no run while the previous one is unfinished "
                         "[API default: allow]."),
            click.option("--catch-up", envvar="TM_CATCH_UP", show_envvar=True,
                         type=click.Choice(["none", "latest", "all"]), default=None,
                         help="Occurrences missed while no coordinator ran: drop them, run "
                         "the latest once, or run all [API default: latest]."),
        ]
        if editing:
            options[:0] = [
                click.option("--cron", envvar="TM_CRON", show_envvar=True, default=None,
                             help="New expression (the next run moves to its next fire time)."),
                click.option("--command", "command_", envvar="TM_COMMAND", show_envvar=True,
                             default=None, help="New command."),
            ]
        else:
            options.append(click.option("--paused", envvar="TM_PAUSED", show_envvar=True,
                                        is_flag=True, default=False,
                                        help="Create it paused (resume to start it)."))
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _fields(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@click.group(cls=ApiGroup, epilog=EXIT_CODES_HELP)
def schedules() -> None:
    """Recurring schedules: each occurrence runs as a task.

    CRON is 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first
    ('*/10 * * * * *'), @hourly/@daily/@weekly/@monthly/@yearly, or '@every 30s'.
    """


@schedules.command("list", epilog=EXIT_CODES_HELP)
@click.option("--limit", envvar="TM_LIMIT", show_envvar=True, type=click.IntRange(1, MAX_PAGE),
              default=MAX_PAGE, show_default=True, help="Schedules per page.")
@click.option("--all", "all_pages", envvar="TM_ALL", show_envvar=True, is_flag=True,
              default=False, help="Follow 'next' cursors to the last page.")
@client_options
def schedules_list(limit: int, all_pages: bool, url: str, api_token: str | None,
                   as_json: bool) -> None:
    """List schedules by name."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    with Client(url, api_token) as api:
        while True:
            page = api.list_schedules(limit=limit, after=cursor)
            found.extend(page["schedules"])
            if not all_pages or not page.get("next") or page["next"] == cursor:
                break
            cursor = page["next"]
    body = {"schedules": found, "next": None if all_pages else page.get("next")}
    if as_json:
        emit_json(body)
        return
    click.echo(render.schedules_table(found, terminal_width()))
    if body["next"]:
        click.echo("more: tm schedules list --all", err=True)


@schedules.command("show", epilog=EXIT_CODES_HELP)
@click.argument("name")
@client_options
def schedules_show(name: str, url: str, api_token: str | None, as_json: bool) -> None:
    """Show every field of one schedule."""
    with Client(url, api_token) as api:
        print_document(api.get_schedule(name), as_json)


@schedules.command("create", epilog=EXIT_CODES_HELP)
@click.argument("name")
@click.argument("cron")
@click.argument("command")
@_schedule_options(editing=False)
@client_options
def schedules_create(name: str, cron: str, command: str, timezone: str | None,
                     max_attempts: int | None, timeout_s: float | None,
                     at_most_once: bool | None, overlap: str | None, catch_up: str | None,
                     paused: bool, url: str, api_token: str | None, as_json: bool) -> None:
    """Create schedule NAME running COMMAND at the times of CRON.

    Example: tm schedules create nightly '30 2 * * *' 'backup.sh' --tz Europe/Berlin
    """
    body = {"name": name, "cron": cron, "command": command, **_fields(
        timezone=timezone, max_attempts=max_attempts, timeout_s=timeout_s,
        at_most_once=at_most_once, overlap=overlap, catch_up=catch_up)}
    if paused:
        body["paused"] = True
    with Client(url, api_token) as api:
        print_document(api.create_schedule(body), as_json)


@schedules.command("edit", epilog=EXIT_CODES_HELP)
@click.argument("name")
@_schedule_options(editing=True)
@client_options
def schedules_edit(name: str, cron: str | None, command_: str | None, timezone: str | None,
                   max_attempts: int | None, timeout_s: float | None,
                   at_most_once: bool | None, overlap: str | None, catch_up: str | None,
                   url: str, api_token: str | None, as_json: bool) -> None:
    """Change the given fields of schedule NAME."""
    body = _fields(cron=cron, command=command_, timezone=timezone, max_attempts=max_attempts,
                   timeout_s=timeout_s, at_most_once=at_most_once, overlap=overlap,
                   catch_up=catch_up)
    if not body:
        raise click.UsageError("nothing to change: give at least one option")
    with Client(url, api_token) as api:
        print_document(api.update_schedule(name, body), as_json)


@schedules.command("pause", epilog=EXIT_CODES_HELP)
@click.argument("name")
@client_options
def schedules_pause(name: str, url: str, api_token: str | None, as_json: bool) -> None:
    """Stop creating runs (runs already created are not touched)."""
    _set_paused(name, True, url, api_token, as_json)


@schedules.command("resume", epilog=EXIT_CODES_HELP)
@click.argument("name")
@client_options
def schedules_resume(name: str, url: str, api_token: str | None, as_json: bool) -> None:
    """Start creating runs again, from the next fire time (nothing is caught up)."""
    _set_paused(name, False, url, api_token, as_json)


def _set_paused(name: str, paused: bool, url: str, api_token: str | None, as_json: bool) -> None:
    with Client(url, api_token) as api:
        print_document(api.update_schedule(name, {"paused": paused}), as_json)


@schedules.command("delete", epilog=EXIT_CODES_HELP)
@click.argument("name")
@client_options
def schedules_delete(name: str, url: str, api_token: str | None, as_json: bool) -> None:
    """Delete a schedule; the tasks it created stay."""
    with Client(url, api_token) as api:
        print_document(api.delete_schedule(name), as_json,
                       lambda deleted: f"deleted schedule {deleted.get('name')}")


@schedules.command("runs", epilog=EXIT_CODES_HELP)
@click.argument("name")
@click.option("--status", "status_", envvar="TM_STATUS", show_envvar=True,
              type=click.Choice([s.value for s in Status], case_sensitive=False), default=None,
              help="Only runs in this status.")
@click.option("--limit", envvar="TM_LIMIT", show_envvar=True, type=click.IntRange(1, MAX_PAGE),
              default=DEFAULT_PAGE, show_default=True, help="Runs per page.")
@click.option("--after", envvar="TM_AFTER", show_envvar=True, default=None,
              help="Start after this cursor (a previous page's 'next').")
@client_options
def schedules_runs(name: str, status_: str | None, limit: int, after: str | None, url: str,
                   api_token: str | None, as_json: bool) -> None:
    """The tasks schedule NAME created, newest first (SCHEDULED_AT is the fire time)."""
    with Client(url, api_token) as api:
        page = api.list_runs(name, limit=limit, after=after,
                             status=status_.lower() if status_ else None)
    print_task_page(page, as_json, f"more: tm schedules runs {name} --after {{next}}")
