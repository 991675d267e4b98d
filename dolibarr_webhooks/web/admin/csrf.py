"""A CSRF token per session, in a hidden ``csrf_token`` field of every form (Flask-WTF's
name): every POST to the dashboard without the session's token is refused with 400.

The token is random and kept in the signed session cookie, so it is the same in every
gunicorn process; SameSite=Lax on the cookie is the second fence."""

from __future__ import annotations

import hmac
import secrets

from flask import abort, request, session

FIELD = "csrf_token"


def token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def renew() -> None:
    """A new token at login: one learnt before cannot be used after."""
    session["csrf"] = secrets.token_urlsafe(32)


def protect() -> None:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    sent = request.form.get(FIELD, "")
    expected = session.get("csrf", "")
    if not (sent and expected and hmac.compare_digest(sent.encode(), expected.encode())):
        abort(400, "csrf")
