"""`tm submit | status | tasks | cancel | workers | watch` (and `tm schedules`, in
tm.client.schedules): the HTTP API from a shell.

Output: a table or key/value block for people (tm.client.render); with `--json`, the API's
JSON document exactly as it came (one document; `tm tasks --all --json` merges the pages
into one `{"tasks": [...], "next": null}`; `tm watch --json` prints one task document per
line, one line per change). Exit statuses: tm.client.command.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import click

from tm.client import render
from tm.client.api import Client, Unavailable
from tm.client.command import (
    DEFAULT_PAGE,
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    MAX_PAGE,
    client_options,
    command,
    emit_json,
    print_document,
    print_task_page,
)
from tm.client.schedules import schedules
from tm.core.tasks import MAX_ATTEMPTS_LIMIT, MAX_TIMEOUT_S, TERMINAL, Status
from tm.core.timefmt import format_time
from tm.core.when import parse_when

WATCH_PATIENCE_S = 30.0  # how long `tm watch` keeps polling a scheduler that stopped answering


def _parse_at(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """The `--at` text as the API's UTC time; relative times count from this machine's clock."""
    if value is None:
        return None
    try:
        return format_time(parse_when(value, datetime.now(UTC), field="--at"))
    except ValueError as exc:
        raise click.UsageError(str(exc), ctx=ctx) from None


@command
@click.argument("command")
@click.option(
    "--at", "at", envvar="TM_AT", show_envvar=True, metavar="WHEN", default=None,
    callback=_parse_at,
    help="When to run: RFC 3339 with offset (2026-11-27T03:31:57Z), 'now', "
    "'in 5m' / 'in 90s' / 'in 2h' / 'in 1d' / 'in 1h30m', or '+5m'  [default: now]",
)
@click.option("--max-attempts", envvar="TM_MAX_ATTEMPTS", show_envvar=True,
              type=click.IntRange(1, MAX_ATTEMPTS_LIMIT), default=None,
              help="Runs allowed if executions fail [API default: 1].")
@click.option("--timeout", "timeout_s", envvar="TM_TIMEOUT", show_envvar=True,
              type=click.FloatRange(min=0, min_open=True, max=MAX_TIMEOUT_S), default=None,
              help="Seconds an execution may take before it fails with 'timeout'.")
@click.option("--idempotency-key", envvar="TM_IDEMPOTENCY_KEY", show_envvar=True, default=None,
              help="A repeat with the same key returns the existing task instead of a new one.")
@click.option("--at-most-once", envvar="TM_AT_MOST_ONCE", show_envvar=True, is_flag=True,
              default=False, help="If its worker is lost, fail the task rather than run it "
              "again.")
@click.option("--quiet", "-q", envvar="TM_QUIET", show_envvar=True, is_flag=True, default=False,
              help="Print only the task id (for `id=$(tm submit -q ...)`).")
@client_options
def submit(command: str, at: str | None, max_attempts: int | None, timeout_s: float | None,
           idempotency_key: str | None, at_most_once: bool, quiet: bool, url: str,
           api_token: str | None, as_json: bool) -> None:
    """Schedule COMMAND; prints the task."""
    if quiet and as_json:
        raise click.UsageError("use --quiet or --json, not both")
    body: dict[str, Any] = {"command": command}
    for key, value in (
        ("scheduled_at", at),
        ("max_attempts", max_attempts),
        ("timeout_s", timeout_s),
        ("idempotency_key", idempotency_key),
    ):
        if value is not None:
            body[key] = value
    if at_most_once:
        body["at_most_once"] = True
    with Client(url, api_token) as api:
        task, created = api.create_task(body)
    if as_json:
        emit_json(task)
    elif quiet:
        click.echo(task.get("task_id"))
    else:
        if not created:
            click.echo("(a task with this idempotency key already exists)", err=True)
        click.echo(render.block(task))


@command
@click.argument("task_id")
@client_options
def status(task_id: str, url: str, api_token: str | None, as_json: bool) -> None:
    """Show every field of one task."""
    with Client(url, api_token) as api:
        print_document(api.get_task(task_id), as_json)


@command
@click.option("--status", "status_", envvar="TM_STATUS", show_envvar=True,
              type=click.Choice([s.value for s in Status], case_sensitive=False), default=None,
              help="Only tasks in this status.")
@click.option("--limit", envvar="TM_LIMIT", show_envvar=True, type=click.IntRange(1, MAX_PAGE),
              default=None, show_default=f"{DEFAULT_PAGE}; {MAX_PAGE} a page with --all",
              help="Tasks per page.")
@click.option("--after", envvar="TM_AFTER", show_envvar=True, default=None,
              help="Start after this cursor (a previous page's 'next').")
@click.option("--all", "all_pages", envvar="TM_ALL", show_envvar=True, is_flag=True,
              default=False, help="Follow 'next' cursors to the last page.")
@client_options
def tasks(status_: str | None, limit: int | None, after: str | None, all_pages: bool, url: str,
          api_token: str | None, as_json: bool) -> None:
    """List tasks, newest first.

    One page unless --all; a further page's cursor is named on stderr. With --all --json
    the pages are merged into one {"tasks": [...], "next": null} document.
    """
    per_page = limit or (MAX_PAGE if all_pages else DEFAULT_PAGE)
    wanted = status_.lower() if status_ else None
    found: list[dict[str, Any]] = []
    cursor = after
    with Client(url, api_token) as api:
        while True:
            page = api.list_tasks(limit=per_page, status=wanted, after=cursor)
            if not all_pages:
                break
            found.extend(page["tasks"])
            if not page.get("next") or page["next"] == cursor:
                page = {"tasks": found, "next": None}
                break
            cursor = page["next"]
    print_task_page(page, as_json, "more: tm tasks --after {next}  (or --all)")


@command
@click.argument("task_id")
@client_options
def cancel(task_id: str, url: str, api_token: str | None, as_json: bool) -> None:
    """Cancel a task; prints it. Exit 1 if it had already finished (API 409)."""
    with Client(url, api_token) as api:
        print_document(api.cancel_task(task_id), as_json)


@command
@client_options
def workers(url: str, api_token: str | None, as_json: bool) -> None:
    """List live workers."""
    with Client(url, api_token) as api:
        print_document(api.list_workers(), as_json,
                       lambda body: render.workers_table(body["workers"]))


@command
@click.argument("task_id")
@click.option("--interval", envvar="TM_INTERVAL", show_envvar=True,
              type=click.FloatRange(min=0.05), default=0.5, show_default=True,
              help="Seconds between polls.")
@client_options
def watch(task_id: str, interval: float, url: str, api_token: str | None, as_json: bool) -> None:
    """Follow a task until it finishes, one line per change of status or attempt.

    Exits 0 when the task completed, 1 when it failed or was cancelled (or the API refused,
    e.g. an unknown id). If the scheduler stops answering, it keeps trying for 30 s, then
    exits 3. With --json each line is the task's JSON document. To bound the wait, run it
    under timeout(1).
    """
    ctx = click.get_current_context()
    try:
        with Client(url, api_token) as api:
            task = _follow(api, task_id, interval, as_json)
    except KeyboardInterrupt:
        ctx.exit(EXIT_INTERRUPTED)
    ctx.exit(EXIT_OK if task.get("status") == Status.COMPLETED else EXIT_REFUSED)


def _follow(api: Client, task_id: str, interval: float, as_json: bool) -> dict[str, Any]:
    """Poll the task until it is finished, printing each change; returns its last state."""
    seen: tuple[Any, Any] | None = None
    silent_since: float | None = None
    while True:
        try:
            task = api.get_task(task_id)
        except Unavailable as exc:
            if seen is None:
                raise  # never reached it: nothing to follow
            now = time.monotonic()
            if silent_since is None:
                silent_since = now
                click.echo(f"warning: {exc}; retrying", err=True)
            elif now - silent_since > WATCH_PATIENCE_S:
                raise
            time.sleep(interval)
            continue
        silent_since = None
        key = (task.get("status"), task.get("attempt"))
        if key != seen:
            seen = key
            if as_json:
                emit_json(task, compact=True)
            else:
                click.echo(render.watch_line(task))
        if task.get("status") in TERMINAL:
            return task
        time.sleep(interval)


COMMANDS: tuple[click.Command, ...] = (submit, status, tasks, cancel, workers, watch, schedules)


def register(group: click.Group) -> None:
    """Add the client commands to `group` (the `tm` command) and its exit-status epilog."""
    for each in COMMANDS:
        group.add_command(each)
    group.epilog = "\n\n".join(filter(None, [group.epilog, EXIT_CODES_HELP]))
