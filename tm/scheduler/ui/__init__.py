"""The web dashboard under /ui: server-rendered pages, live fragments polled by htmx.

Rooms:
* `pages.py` — the "ui" blueprint: every page, fragment and form route, and the template
  filters;
* `sessions.py` — who may see them: the sign-in cookie, CSRF tokens, the check every /ui
  request passes first and the security headers every answer gets;
* `charts.py` — the overview's charts: what they count and the bars' geometry;
* `templates/` (Jinja) and `static/` (CSS, vendored htmx): package data.
"""
