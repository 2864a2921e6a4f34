"""Dashboard sessions: the sign-in cookie, CSRF tokens, and the checks every /ui request passes.

Rules kept here:
* The API token never travels in a URL and is never logged. With a token configured, the
  sign-in form (tm.scheduler.ui.pages) checks it once and answers with a session cookie:
  `<sid>.<expiry>.<mac>`, the MAC an HMAC under a key derived from the token (so any
  scheduler replica with the same token accepts it, and changing the token ends every
  session). The cookie is HttpOnly, SameSite=Strict, Path=/ui, and is accepted on /ui
  routes only (the app's bearer check skips the "ui" blueprint, whose own check is
  `authenticate`); the JSON API keeps requiring the bearer header.
* Every state change (cancel, sign-out) is a POST carrying a CSRF token derived from the
  session id (HMAC), checked in constant time (`check_csrf`). Without a token configured
  the dashboard is open like the API, but still hands out an anonymous session so that
  cancel is CSRF-protected too.
* Every answer carries a Content-Security-Policy that allows scripts and styles from this
  origin only (no CDN, nothing inline), and is not cached (the static files excepted).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

import structlog
from quart import Response, g, request

from tm.scheduler.http import services

log = structlog.get_logger(__name__)

COOKIE = "tm_ui_session"
SESSION_TTL_S = 8 * 3600
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# Reached without a session: the sign-in form itself, the way to it, and the CSS.
OPEN_ENDPOINTS = frozenset({"ui.root", "ui.static", "ui.login", "ui.login_submit"})


@lru_cache(maxsize=8)
def session_key(api_token: str | None) -> bytes:
    """The HMAC key of session cookies and CSRF tokens; derived from the token, if any."""
    if api_token is None:
        # Open dashboard: the cookie proves nothing; it only anchors the CSRF token.
        return b"tm-ui-open-v1"
    return hashlib.sha256(b"tm-ui-session-v1\0" + api_token.encode()).digest()


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def mint_session(key: bytes, now: float) -> tuple[str, str]:
    """A new (session id, cookie value) valid for SESSION_TTL_S from `now`."""
    sid = secrets.token_urlsafe(24)
    expiry = int(now) + SESSION_TTL_S
    return sid, f"{sid}.{expiry}.{_mac(key, f'{sid}.{expiry}')}"


def verify_session(key: bytes, cookie: str, now: float) -> str | None:
    """The session id of a cookie minted under `key` that has not expired, else None."""
    parts = cookie.split(".")
    if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) > 12:
        return None
    sid, expiry, mac = parts
    if not hmac.compare_digest(mac.encode(), _mac(key, f"{sid}.{expiry}").encode()):
        return None
    if int(expiry) <= now:
        return None
    return sid


def csrf_token(key: bytes, sid: str) -> str:
    return _mac(key, f"csrf:{sid}")


def safe_next(target: str | None) -> str:
    """A local /ui path to go to after sign-in; anything else becomes /ui."""
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui"


def see_other(location: str) -> Response:
    """303 to a local path: after a form post, the browser GETs the page."""
    return Response("", status=303, headers={"Location": location})


def is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def token_required() -> bool:
    return services().settings.api_token is not None


def current_key() -> bytes:
    return session_key(services().settings.api_token)


def start_session() -> None:
    """Give this answer a new session cookie (`finish` sets it)."""
    _, g.new_cookie = mint_session(current_key(), time.time())


def end_session(response: Response) -> Response:
    response.delete_cookie(COOKIE, path="/ui")
    return response


# ---------------------------------------------------------------- the blueprint's hooks


async def authenticate() -> Response | None:
    """Before each /ui request: its session (`g.sid`, `g.csrf`), or the way to sign in."""
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    key = current_key()
    cookie = request.cookies.get(COOKIE, "")
    sid = verify_session(key, cookie, time.time()) if cookie else None
    if sid is None:
        if token_required():
            return _to_sign_in()
        sid, g.new_cookie = mint_session(key, time.time())
    g.sid = sid
    g.csrf = csrf_token(key, sid)
    return None


def _to_sign_in() -> Response:
    here = request.path
    if request.query_string:
        here += "?" + request.query_string.decode("ascii", "replace")
    target = "/ui/login?" + urlencode({"next": safe_next(here)})
    if is_htmx():
        # A poll after the session expired: send the whole page to the sign-in form.
        response = Response("", status=401)
        response.headers["HX-Redirect"] = target
        return response
    return see_other(target)


async def finish(response: Response) -> Response:
    """After each /ui request: the new session cookie, if any, and the security headers."""
    new_cookie = g.get("new_cookie")
    if new_cookie:
        response.set_cookie(COOKIE, new_cookie, max_age=SESSION_TTL_S, path="/ui",
                            httponly=True, samesite="Strict", secure=request.is_secure)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "ui.static":
        response.headers["Cache-Control"] = "no-store"
    return response


def check_csrf(form: Any) -> Response | None:
    """None if the form (or the X-CSRF-Token header) carries this session's token; else
    the 403 to answer."""
    given = str(form.get("csrf", "")) or request.headers.get("X-CSRF-Token", "")
    if not hmac.compare_digest(given.encode(), g.csrf.encode()):
        log.warning("ui csrf rejected", action="ui_csrf_rejected", path=request.path)
        return Response("CSRF token missing or wrong; reload the page.", status=403,
                        content_type="text/plain; charset=utf-8")
    return None


def check_token(given: str) -> bool:
    """Whether `given` is the API token (constant time). Never logged."""
    token = services().settings.api_token
    assert token is not None
    return hmac.compare_digest(given.encode(), token.encode())
