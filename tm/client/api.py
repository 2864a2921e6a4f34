"""`Client`: the scheduler's HTTP API as Python calls (used by the `tm` client commands).

One httpx connection pool per client, the bearer token on every request. Each call returns
the API's JSON document as it came (dicts and lists) or raises:

* `Refused` — the API said no (a 4xx): bad input, unknown id, a finished task, a wrong
  token. `status` is the HTTP status, `message` the API's `error`.
* `Unavailable` — the scheduler cannot be reached, timed out, answered 5xx (e.g. 503
  database down) or answered something that is not the API's JSON.

Both are `ClientError`s, whose text is one line for a person. Nothing here prints or exits;
the commands (tm.client.cli) decide that.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, cast
from urllib.parse import quote

import httpx

REQUEST_TIMEOUT_S = 30.0


class ClientError(Exception):
    """A call that did not get the API's answer to it."""


class Refused(ClientError):
    """The API answered 4xx."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.message = message


class Unavailable(ClientError):
    """No usable answer: unreachable, timed out, 5xx, or not the API's JSON."""


class Client:
    """The API at `url` (e.g. http://127.0.0.1:8081), with `token` if it requires one."""

    def __init__(self, url: str, token: str | None = None, *,
                 timeout: float = REQUEST_TIMEOUT_S) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def __repr__(self) -> str:
        return f"<Client {self.url}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """(status, JSON body) of a 2xx/3xx answer; Refused or Unavailable otherwise.
        `kwargs` go to httpx (json=, params=)."""
        try:
            response = self._http.request(method, path, **kwargs)
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
            if code < 500:
                raise Refused(code, response.reason_phrase, message)
            raise Unavailable(f"{code} {response.reason_phrase}: {message}")
        if body is None:
            raise Unavailable(
                f"{self.url} answered {code} with something that is not JSON; "
                "is --url the TaskMaster scheduler?"
            )
        return code, body

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The JSON object the API answers (every route of it answers an object)."""
        return cast(dict[str, Any], self.request(method, path, **kwargs)[1])

    # ---------------------------------------------------------------- tasks

    def create_task(self, task: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The task stored for `task` (POST /tasks), and whether it is new (False: its
        idempotency_key was known, this is the existing task)."""
        code, body = self.request("POST", "/tasks", json=task)
        return body, code != 200

    def get_task(self, task_id: str) -> dict[str, Any]:
        return self._call("GET", f"/tasks/{task_id}")

    def list_tasks(self, *, limit: int, status: str | None = None,
                   after: str | None = None) -> dict[str, Any]:
        """One page, newest first: {"tasks": [...], "next": cursor or None}."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if after:
            params["after"] = after
        return self._call("GET", "/tasks", params=params)

    def cancel_task(self, task_id: str) -> dict[str, Any]:
        """The task, cancelled; Refused (409) if it had already finished."""
        return self._call("POST", f"/tasks/{task_id}/cancel")

    def list_workers(self) -> dict[str, Any]:
        """{"workers": [...]}: the live ones."""
        return self._call("GET", "/workers")

    # ---------------------------------------------------------------- schedules

    def create_schedule(self, schedule: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/schedules", json=schedule)

    def get_schedule(self, name: str) -> dict[str, Any]:
        return self._call("GET", _schedule(name))

    def list_schedules(self, *, limit: int, after: str | None = None) -> dict[str, Any]:
        """One page by name: {"schedules": [...], "next": cursor or None}."""
        params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
        return self._call("GET", "/schedules", params=params)

    def update_schedule(self, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        """The schedule with `fields` changed (any subset; {"paused": ...} pauses/resumes)."""
        return self._call("PATCH", _schedule(name), json=fields)

    def delete_schedule(self, name: str) -> dict[str, Any]:
        """The deleted schedule (the tasks it created stay)."""
        return self._call("DELETE", _schedule(name))

    def list_runs(self, name: str, *, limit: int, status: str | None = None,
                  after: str | None = None) -> dict[str, Any]:
        """One page of the tasks schedule `name` created, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        if status:
            params["status"] = status
        return self._call("GET", f"{_schedule(name)}/runs", params=params)


def _schedule(name: str) -> str:
    return f"/schedules/{quote(name, safe='')}"
