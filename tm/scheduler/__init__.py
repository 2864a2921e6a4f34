"""The HTTP scheduler: the API of the contract (DESIGN.md "HTTP API") and the dashboard.

Rooms:
* `service.py` — `serve_scheduler`: database, migrations, group commit, hypercorn;
  `processes.py` — `tm scheduler --processes N`, N processes on one address;
* `app.py` — `create_app`: the plumbing plus every blueprint (BLUEPRINTS; add new route
  groups there);
* `http.py` — what every route shares: JSON bodies whatever the Content-Type, JSON errors
  and their status codes, the bearer check, body limits, `services()`;
* `tasks.py`, `schedules.py`, `cluster.py` — the routes, one blueprint each;
  `query.py` — `limit`/`status`/`after` of the list routes;
* `ingest.py` — group commit: concurrent inserts share one statement;
* `render.py` — rows as the contract's JSON objects; `schemas.py` — the same contract as
  pydantic models, for /openapi.json only (validation is tm.core);
* `ui/` — the dashboard under /ui (its own rooms: sessions, charts, pages).
"""
