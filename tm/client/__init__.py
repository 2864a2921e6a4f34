"""The client side of the HTTP API: Python calls, the `tm` client commands, their output.

Rooms:
* `api.py` — `Client`: one httpx pool with the bearer token; each call returns the API's
  JSON document or raises `Refused` (4xx) / `Unavailable` (unreachable, 5xx, not JSON);
* `command.py` — what every client command shares: --url/--api-token/--json, the exit
  statuses scripts rely on (and the mapping of the client's errors to them);
* `cli.py` — the task commands (submit, status, tasks, cancel, workers, watch) and
  `register`, which adds them to `tm`; `schedules.py` — `tm schedules ...`;
* `render.py` — pure functions from API documents to the tables and blocks people read.
"""
