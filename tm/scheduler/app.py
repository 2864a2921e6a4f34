"""`create_app`: the HTTP API of the contract (DESIGN.md "HTTP API") as one Quart app.

The app is the plumbing of tm.scheduler.http (JSON bodies and errors, the bearer check,
body limits) plus one blueprint per group of routes, in BLUEPRINTS. To add routes, write a
module with a module-level `blueprint` (tm.scheduler.schedules is a small example: routes
take what they need from `services()`, answer with `json_response`, raise `ApiError`, and
document themselves for /openapi.json with quart-schema decorators), then add it here.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint
from quart_schema import QuartSchema, Tag
from quart_trio import QuartTrio

from tm import __version__
from tm.aio.pg import Database
from tm.scheduler import cluster, schedules, tasks
from tm.scheduler import schemas as sc
from tm.scheduler.http import Services, install
from tm.scheduler.ingest import GroupCommit
from tm.scheduler.ui import pages
from tm.settings import SchedulerSettings

# Every group of routes the app serves.
BLUEPRINTS: tuple[Blueprint, ...] = (
    tasks.blueprint,
    schedules.blueprint,
    cluster.blueprint,
    pages.blueprint,
)

TAGS: list[Tag | dict[str, Any]] = [
    Tag(name="tasks", description="Schedule, find, list and cancel tasks."),
    Tag(name="schedules", description="Recurring schedules: each occurrence runs as a task."),
    Tag(name="cluster", description="Workers, health and readiness."),
]


def create_app(settings: SchedulerSettings, db: Database, ingest: GroupCommit) -> QuartTrio:
    """The API over `db`; inserts go through `ingest` (group commit)."""
    # No app-wide /static: the dashboard serves its own files under /ui/static.
    app = QuartTrio("tm.scheduler", static_folder=None)
    install(app, Services(settings=settings, db=db, ingest=ingest))
    QuartSchema(
        app,
        info={"title": "TaskMaster", "version": __version__,
              "description": "Schedule commands to run at a time; see the README."},
        tags=TAGS,
        redoc_ui_path=None,
        scalar_ui_path=None,
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}}
        if settings.api_token else None,
        security=[{"bearer": []}] if settings.api_token else None,
        openapi_provider_class=sc.OpenAPI,
    )
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    return app
