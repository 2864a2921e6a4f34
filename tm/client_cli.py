"""`tm submit | status | tasks | cancel | workers | watch | schedules`: the HTTP API from a
shell.

Output: a table or key/value block for people (tm.client_render); with `--json`, the API's
JSON document exactly as it came (one document; `tm tasks --all --json` merges the pages
into one `{"tasks": [...], "next": null}`; `tm watch --json` prints one task document per
line, one line per change).

Exit status, which scripts can rely on (also in `tm --help`):

* 0 — success; for `tm watch`, the task completed.
* 1 — the API said no (a 4xx: bad input, unknown id, cancelling a finished task, wrong
  token), its `error` message on stderr; or the task `tm watch` followed failed or was
  cancelled.
* 2 — usage error (click's own code): unknown option, bad `--at`, bad `--url`.
* 3 — the scheduler cannot be reached, timed out, answered 5xx (e.g. 503 database down) or
  answered something that is not the API's JSON.
* 130 — `tm watch` interrupted (Ctrl-C).

Errors go to stderr as one line starting `error: `; stdout then holds nothing.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import quote

import click
import httpx

from tm import client_render as render
from tm.core.tasks import MAX_ATTEMPTS_LIMIT, MAX_TIMEOUT_S, TERMINAL, Status
from tm.core.timefmt import format_time
from tm.core.when import parse_when

F = Callable[..., Any]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

REQUEST_TIMEOUT_S = 30.0
WATCH_PATIENCE_S = 30.0  # how long `tm watch` keeps polling a scheduler that stopped answering
MAX_PAGE = 1000  # the API's largest `limit`
DEFAULT_PAGE = 20

EXIT_CODES_HELP = """\b
Exit status of submit, status, tasks, cancel, workers, watch and schedules:
  0    success (watch: the task completed)
  1    the API said no (4xx: bad input, unknown id, task already
       finished, bad token), or the watched task failed or was cancelled
  2    usage error (unknown option, bad --at or --url)
  3    scheduler unreachable, or it answered 5xx (e.g. database down)
  130  watch interrupted (Ctrl-C)
"""


class ClientError(click.ClickException):
    """Printed as one `error: ...` line on stderr; `exit_code` says which kind."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class Refused(ClientError):
    exit_code = EXIT_REFUSED


class Unavailable(ClientError):
    exit_code = EXIT_UNAVAILABLE


class Api:
    """One connection pool to the scheduler; `call` returns the decoded JSON or raises."""

    def __init__(self, url: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self._client = httpx.Client(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S)

    def __repr__(self) -> str:
        return f"<Api {self.url}>"

    def close(self) -> None:
        self._client.close()

    def call_with_status(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach {self.url}: {exc or type(exc).__name__}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        code = response.status_code
        if code >= 400:
            message = body.get("error") if isinstance(body, dict) else None
            if not isinstance(message, str):
                message = response.text.strip()[:500] or "(no message)"
            error = Refused if code < 500 else Unavailable
            raise error(f"{code} {response.reason_phrase}: {message}")
        if body is None:
            raise Unavailable(
                f"{self.url} answered {code} with something that is not JSON; "
                "is --url the TaskMaster scheduler?"
            )
        return code, body

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.call_with_status(method, path, **kwargs)[1]


@contextmanager
def open_api(url: str, token: str | None) -> Iterator[Api]:
    api = Api(url, token)
    try:
        yield api
    finally:
        api.close()


# ---------------------------------------------------------------------------- options


def _check_url(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parsed = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise click.BadParameter(str(exc), param=param) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise click.BadParameter(
            f"{value!r} is not an http(s) URL, e.g. http://127.0.0.1:8081", param=param
        )
    return value


def _parse_at(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """The `--at` text as the API's UTC time; relative times count from this machine's clock."""
    if value is None:
        return None
    try:
        return format_time(parse_when(value, datetime.now(UTC), field="--at"))
    except ValueError as exc:
        raise click.UsageError(str(exc), ctx=ctx) from None


def client_options(fn: F) -> F:
    """--url, --api-token and --json, which every client command takes."""
    for option in reversed(
        [
            click.option(
                "--url",
                envvar="TM_URL",
                show_envvar=True,
                default="http://127.0.0.1:8081",
                show_default=True,
                callback=_check_url,
                help="Scheduler base URL.",
            ),
            click.option(
                "--api-token",
                envvar="TM_API_TOKEN",
                show_envvar=True,
                default=None,
                help="Bearer token, if the API requires one.",
            ),
            click.option(
                "--json",
                "as_json",
                envvar="TM_JSON",
                show_envvar=True,
                is_flag=True,
                default=False,
                help="Print the API's JSON document instead of a table (for scripts).",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _command(fn: F) -> click.Command:
    return click.command(epilog=EXIT_CODES_HELP)(fn)


def _emit_json(body: Any, *, compact: bool = False) -> None:
    if compact:
        click.echo(json.dumps(body, ensure_ascii=False, separators=(",", ":")))
    else:
        click.echo(json.dumps(body, indent=2, ensure_ascii=False))


def _width() -> int:
    return shutil.get_terminal_size((120, 24)).columns


# ---------------------------------------------------------------------------- commands


@_command
@click.argument("command")
@click.option(
    "--at",
    "at",
    envvar="TM_AT",
    show_envvar=True,
    metavar="WHEN",
    default=None,
    callback=_parse_at,
    help="When to run: RFC 3339 with offset (2026-11-27T03:31:57Z), 'now', "
    "'in 5m' / 'in 90s' / 'in 2h' / 'in 1d' / 'in 1h30m', or '+5m'  [default: now]",
)
@click.option(
    "--max-attempts",
    envvar="TM_MAX_ATTEMPTS",
    show_envvar=True,
    type=click.IntRange(1, MAX_ATTEMPTS_LIMIT),
    default=None,
    help="Runs allowed if executions fail [API default: 1].",
)
@click.option(
    "--timeout",
    "timeout_s",
    envvar="TM_TIMEOUT",
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True, max=MAX_TIMEOUT_S),
    default=None,
    help="Seconds an execution may take before it fails with 'timeout'.",
)
@click.option(
    "--idempotency-key",
    envvar="TM_IDEMPOTENCY_KEY",
    show_envvar=True,
    default=None,
    help="A repeat with the same key returns the existing task instead of a new one.",
)
@click.option(
    "--at-most-once",
    envvar="TM_AT_MOST_ONCE",
    show_envvar=True,
    is_flag=True,
    default=False,
    help="If its worker is lost, fail the task rather than run it again.",
)
@click.option(
    "--quiet",
    "-q",
    envvar="TM_QUIET",
    show_envvar=True,
    is_flag=True,
    default=False,
    help="Print only the task id (for `id=$(tm submit -q ...)`).",
)
@client_options
def submit(
    command: str,
    at: str | None,
    max_attempts: int | None,
    timeout_s: float | None,
    idempotency_key: str | None,
    at_most_once: bool,
    quiet: bool,
    url: str,
    api_token: str | None,
    as_json: bool,
) -> None:
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
    with open_api(url, api_token) as api:
        code, task = api.call_with_status("POST", "/tasks", json=body)
    if as_json:
        _emit_json(task)
    elif quiet:
        click.echo(task.get("task_id"))
    else:
        if code == 200:
            click.echo("(a task with this idempotency key already exists)", err=True)
        click.echo(render.block(task))


@_command
@click.argument("task_id")
@client_options
def status(task_id: str, url: str, api_token: str | None, as_json: bool) -> None:
    """Show every field of one task."""
    with open_api(url, api_token) as api:
        task = api.call("GET", f"/tasks/{task_id}")
    if as_json:
        _emit_json(task)
    else:
        click.echo(render.block(task))


@_command
@click.option(
    "--status",
    "status_",
    envvar="TM_STATUS",
    show_envvar=True,
    type=click.Choice([s.value for s in Status], case_sensitive=False),
    default=None,
    help="Only tasks in this status.",
)
@click.option(
    "--limit",
    envvar="TM_LIMIT",
    show_envvar=True,
    type=click.IntRange(1, MAX_PAGE),
    default=None,
    show_default=f"{DEFAULT_PAGE}; {MAX_PAGE} a page with --all",
    help="Tasks per page.",
)
@click.option(
    "--after",
    envvar="TM_AFTER",
    show_envvar=True,
    default=None,
    help="Start after this cursor (a previous page's 'next').",
)
@click.option(
    "--all",
    "all_pages",
    envvar="TM_ALL",
    show_envvar=True,
    is_flag=True,
    default=False,
    help="Follow 'next' cursors to the last page.",
)
@client_options
def tasks(
    status_: str | None,
    limit: int | None,
    after: str | None,
    all_pages: bool,
    url: str,
    api_token: str | None,
    as_json: bool,
) -> None:
    """List tasks, newest first.

    One page unless --all; a further page's cursor is named on stderr. With --all --json
    the pages are merged into one {"tasks": [...], "next": null} document.
    """
    params: dict[str, Any] = {"limit": limit or (MAX_PAGE if all_pages else DEFAULT_PAGE)}
    if status_:
        params["status"] = status_.lower()
    found: list[dict[str, Any]] = []
    cursor = after
    with open_api(url, api_token) as api:
        while True:
            query = {**params, "after": cursor} if cursor else params
            page = api.call("GET", "/tasks", params=query)
            if not all_pages:
                break
            found.extend(page["tasks"])
            if not page.get("next") or page["next"] == cursor:
                page = {"tasks": found, "next": None}
                break
            cursor = page["next"]
    if as_json:
        _emit_json(page)
        return
    click.echo(render.tasks_table(page["tasks"], _width()))
    if page.get("next"):
        click.echo(f"more: tm tasks --after {page['next']}  (or --all)", err=True)


@_command
@click.argument("task_id")
@client_options
def cancel(task_id: str, url: str, api_token: str | None, as_json: bool) -> None:
    """Cancel a task; prints it. Exit 1 if it had already finished (API 409)."""
    with open_api(url, api_token) as api:
        task = api.call("POST", f"/tasks/{task_id}/cancel")
    if as_json:
        _emit_json(task)
    else:
        click.echo(render.block(task))


@_command
@client_options
def workers(url: str, api_token: str | None, as_json: bool) -> None:
    """List live workers."""
    with open_api(url, api_token) as api:
        body = api.call("GET", "/workers")
    if as_json:
        _emit_json(body)
    else:
        click.echo(render.workers_table(body["workers"]))


@_command
@click.argument("task_id")
@click.option(
    "--interval",
    envvar="TM_INTERVAL",
    show_envvar=True,
    type=click.FloatRange(min=0.05),
    default=0.5,
    show_default=True,
    help="Seconds between polls.",
)
@client_options
def watch(task_id: str, interval: float, url: str, api_token: str | None, as_json: bool) -> None:
    """Follow a task until it finishes, one line per change of status or attempt.

    Exits 0 when the task completed, 1 when it failed or was cancelled (or the API refused,
    e.g. an unknown id). If the scheduler stops answering, it keeps trying for 30 s, then
    exits 3. With --json each line is the task's JSON document. To bound the wait, run it
    under timeout(1).
    """
    ctx = click.get_current_context()
    seen: tuple[Any, Any] | None = None
    silent_since: float | None = None
    try:
        with open_api(url, api_token) as api:
            while True:
                try:
                    task = api.call("GET", f"/tasks/{task_id}")
                except Unavailable as exc:
                    if seen is None:
                        raise  # never reached it: nothing to follow
                    now = time.monotonic()
                    if silent_since is None:
                        silent_since = now
                        click.echo(f"warning: {exc.format_message()}; retrying", err=True)
                    elif now - silent_since > WATCH_PATIENCE_S:
                        raise
                    time.sleep(interval)
                    continue
                silent_since = None
                key = (task.get("status"), task.get("attempt"))
                if key != seen:
                    seen = key
                    if as_json:
                        _emit_json(task, compact=True)
                    else:
                        click.echo(render.watch_line(task))
                if task.get("status") in TERMINAL:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        ctx.exit(EXIT_INTERRUPTED)
    ctx.exit(EXIT_OK if task.get("status") == Status.COMPLETED else EXIT_REFUSED)


# ---------------------------------------------------------------------------- schedules


def _path(name: str) -> str:
    return f"/schedules/{quote(name, safe='')}"


def _print_schedule(schedule: Any, as_json: bool) -> None:
    if as_json:
        _emit_json(schedule)
    else:
        click.echo(render.block(schedule))


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


@click.group(epilog=EXIT_CODES_HELP)
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
    with open_api(url, api_token) as api:
        while True:
            params = {"limit": limit, **({"after": cursor} if cursor else {})}
            page = api.call("GET", "/schedules", params=params)
            found.extend(page["schedules"])
            if not all_pages or not page.get("next") or page["next"] == cursor:
                break
            cursor = page["next"]
    body = {"schedules": found, "next": None if all_pages else page.get("next")}
    if as_json:
        _emit_json(body)
        return
    click.echo(render.schedules_table(found, _width()))
    if body["next"]:
        click.echo("more: tm schedules list --all", err=True)


@schedules.command("show", epilog=EXIT_CODES_HELP)
@click.argument("name")
@client_options
def schedules_show(name: str, url: str, api_token: str | None, as_json: bool) -> None:
    """Show every field of one schedule."""
    with open_api(url, api_token) as api:
        _print_schedule(api.call("GET", _path(name)), as_json)


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
    with open_api(url, api_token) as api:
        _print_schedule(api.call("POST", "/schedules", json=body), as_json)


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
    with open_api(url, api_token) as api:
        _print_schedule(api.call("PATCH", _path(name), json=body), as_json)


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
    with open_api(url, api_token) as api:
        _print_schedule(api.call("PATCH", _path(name), json={"paused": paused}), as_json)


@schedules.command("delete", epilog=EXIT_CODES_HELP)
@click.argument("name")
@client_options
def schedules_delete(name: str, url: str, api_token: str | None, as_json: bool) -> None:
    """Delete a schedule; the tasks it created stay."""
    with open_api(url, api_token) as api:
        deleted = api.call("DELETE", _path(name))
    if as_json:
        _emit_json(deleted)
    else:
        click.echo(f"deleted schedule {deleted.get('name')}")


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
    params: dict[str, Any] = _fields(limit=limit, after=after,
                                     status=status_.lower() if status_ else None)
    with open_api(url, api_token) as api:
        page = api.call("GET", f"{_path(name)}/runs", params=params)
    if as_json:
        _emit_json(page)
        return
    click.echo(render.tasks_table(page["tasks"], _width()))
    if page.get("next"):
        click.echo(f"more: tm schedules runs {name} --after {page['next']}", err=True)


COMMANDS: tuple[click.Command, ...] = (submit, status, tasks, cancel, workers, watch, schedules)


def register(group: click.Group) -> None:
    """Add the client commands to `group` (the `tm` command) and its exit-status epilog."""
    for command in COMMANDS:
        group.add_command(command)
    group.epilog = "\n\n".join(filter(None, [group.epilog, EXIT_CODES_HELP]))
