"""What every client command shares: its options, its exit status, its JSON output.

Exit status, which scripts can rely on (also in `tm --help`):

* 0 — success; for `tm watch`, the task completed.
* 1 — the API said no (a 4xx: bad input, unknown id, cancelling a finished task, wrong
  token), its `error` message on stderr; or the task `tm watch` followed failed or was
  cancelled.
* 2 — usage error (click's own code): unknown option, bad `--at`, bad `--url`.
* 3 — the scheduler cannot be reached, timed out, answered 5xx (e.g. 503 database down) or
  answered something that is not the API's JSON.
* 130 — `tm watch` interrupted (Ctrl-C).

Errors go to stderr as one line starting `error: `; stdout then holds nothing. A command
made with `ApiCommand` turns the client's exceptions (tm.client.api) into these.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import IO, Any

import click
import httpx

from tm.client import render
from tm.client.api import Refused, Unavailable

F = Callable[..., Any]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

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


class CommandError(click.ClickException):
    """Printed as one `error: ...` line on stderr; `exit_code` says which kind."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class RefusedError(CommandError):
    exit_code = EXIT_REFUSED


class UnavailableError(CommandError):
    exit_code = EXIT_UNAVAILABLE


class ApiCommand(click.Command):
    """A command that calls the API: Refused exits 1, Unavailable exits 3."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Refused as exc:
            raise RefusedError(str(exc)) from None
        except Unavailable as exc:
            raise UnavailableError(str(exc)) from None


class ApiGroup(click.Group):
    """A group whose commands are ApiCommands."""

    command_class = ApiCommand


def command(fn: F) -> click.Command:
    """A top-level client command, with the exit statuses in its --help."""
    return click.command(cls=ApiCommand, epilog=EXIT_CODES_HELP)(fn)


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


def client_options(fn: F) -> F:
    """--url, --api-token and --json, which every client command takes."""
    for option in reversed(
        [
            click.option("--url", envvar="TM_URL", show_envvar=True,
                         default="http://127.0.0.1:8081", show_default=True,
                         callback=_check_url, help="Scheduler base URL."),
            click.option("--api-token", envvar="TM_API_TOKEN", show_envvar=True, default=None,
                         help="Bearer token, if the API requires one."),
            click.option("--json", "as_json", envvar="TM_JSON", show_envvar=True,
                         is_flag=True, default=False,
                         help="Print the API's JSON document instead of a table (for "
                         "scripts)."),
        ]
    ):
        fn = option(fn)
    return fn


def emit_json(body: Any, *, compact: bool = False) -> None:
    if compact:
        click.echo(json.dumps(body, ensure_ascii=False, separators=(",", ":")))
    else:
        click.echo(json.dumps(body, indent=2, ensure_ascii=False))


def print_document(document: Any, as_json: bool,
                   as_text: Callable[[Any], str] = render.block) -> None:
    """The API's document as it came with --json; else `as_text(document)` for a person."""
    if as_json:
        emit_json(document)
    else:
        click.echo(as_text(document))


def print_task_page(page: dict[str, Any], as_json: bool, more: str) -> None:
    """A page of tasks as a table, and on stderr `more` (with {next}, its cursor) if there
    is a further page; or the page's JSON document."""
    if as_json:
        emit_json(page)
        return
    click.echo(render.tasks_table(page["tasks"], terminal_width()))
    if page.get("next"):
        click.echo(more.format(next=page["next"]), err=True)


def terminal_width() -> int:
    return shutil.get_terminal_size((120, 24)).columns
