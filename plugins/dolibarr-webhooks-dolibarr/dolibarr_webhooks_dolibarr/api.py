"""Calls to Dolibarr's REST API, and what each answer means for the worker.

Dolibarr (Restler) answers errors as ``{"error": {"code": N, "message": "<reason>: <text>"}}``,
except an unknown API (501, plain text). 401 and 403 will not change until someone fixes the
key or the user's rights: ``PermanentFailure``, with Dolibarr's message (never the key). 404 is
``NotFound``, for the caller to judge. 5xx, 408, 429 and network errors are retried, after
``Retry-After`` when Dolibarr or a proxy sends one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode, urlsplit

import requests

from dolibarr_webhooks import PermanentFailure, RetryLater
from dolibarr_webhooks.pluginkit import retry_after

from .settings import Settings, Source

__version__ = "0.1.0"
USER_AGENT = f"dolibarr-webhooks-dolibarr/{__version__}"


def row_id(value: Any) -> int | None:
    """A Dolibarr row id from the body's loose types (``42`` or ``"42"``), else None: zero,
    negatives, anything but ASCII digits ("²" is a digit to ``str.isdigit``, not to ``int``)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text) or None


class DolibarrUnavailable(Exception):
    """Dolibarr did not answer, or answered 5xx/408/429: worth retrying on the core's schedule."""


class NotFound(Exception):
    """Dolibarr answered 404: the object (or the API route) does not exist."""


class Client:
    """One Dolibarr REST API (one source), as its API user."""

    def __init__(self, settings: Settings, source: Source, api_url: str) -> None:
        self.settings = settings
        self.source = source
        self.api_url = api_url.rstrip("/")
        parts = urlsplit(self.api_url)
        self.where = f"Dolibarr API {parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"

    def call(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None) -> Any:
        """The decoded JSON answer to ``METHOD {api_url}/{path}``, or the exception that says what to do."""
        url = f"{self.api_url}/{path}" + (f"?{urlencode(query)}" if query else "")
        what = f"{method} /{path}"
        try:
            response = requests.request(method, url, json=body, timeout=self.settings.timeout, allow_redirects=False,
                                        headers={"DOLAPIKEY": self.source.api_key, "Accept": "application/json",
                                                 "User-Agent": USER_AGENT})
        except requests.RequestException as exc:
            # requests' text names the URL (the key travels in a header, never in it)
            raise DolibarrUnavailable(f"{self.where}: {what}: {type(exc).__name__}: {str(exc)[:300]}") from exc
        check(response, self.where, what, self.source.where)
        try:
            return response.json()
        except ValueError:
            raise PermanentFailure(f"{self.where} answered {what} with {response.status_code} but no JSON "
                                   f"({response.headers.get('Content-Type')}): is this URL Dolibarr's REST API "
                                   "(…/api/index.php)?") from None

    def api_user(self) -> int:
        """The id of the user the API key belongs to (``GET /users/info``), read once per process."""
        cache_key = (self.api_url, self.source.api_key)
        with self.settings.lock:
            known = self.settings.api_users.get(cache_key)
        if known is not None:
            return known
        try:
            info = self.call("GET", "users/info")
        except PermanentFailure as exc:
            # Dolibarr's code refuses /users/info to a user without a right on users (not recorded).
            raise PermanentFailure(f"{exc}; reading its own user record also needs the right "
                                   "'Create/modify own user information' (user self creer)") from None
        try:
            user_id = int(info["id"])
        except (KeyError, TypeError, ValueError):
            raise PermanentFailure(f"{self.where}: GET /users/info gave no user id") from None
        with self.settings.lock:
            self.settings.api_users[cache_key] = user_id
        return user_id


def message(response: requests.Response) -> str:
    """Dolibarr's own words for an error, without its debug trace."""
    try:
        error = response.json().get("error") or {}
        text = str(error.get("message") or "")
    except (ValueError, AttributeError):
        text = response.text
    return " ".join(text.split())[:300]


def check(response: requests.Response, where: str, what: str, key_setting: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    detail = f"{where} answered {what} with {status}: {message(response) or response.reason}"
    if status == 401:
        raise PermanentFailure(f"{detail}. The API key was refused: check {key_setting} (the user's API key, "
                               "its status and validity dates)")
    if status == 403:
        raise PermanentFailure(f"{detail}. The API user lacks a right, or the module is disabled: see the "
                               "permissions in the plugin's README")
    if status == 404:
        raise NotFound(detail)
    if status in (429, 503):
        after = retry_after(response.headers.get("Retry-After"))
        if after is not None:
            raise RetryLater(detail, after=after)
    if status == 501:
        raise PermanentFailure(f"{detail}. Dolibarr has no such API: is its module enabled?")
    if status in (408, 429) or status >= 500:
        raise DolibarrUnavailable(detail)
    raise PermanentFailure(detail)
