"""Send messages over one SMTP connection and sort failures into "retry" and "permanent"."""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Sequence

from dolibarr_webhooks import PermanentFailure

from .config import Settings

log = logging.getLogger("dolibarr_webhooks_email")


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Verified TLS; ``ca_file`` trusts a private CA (an internal relay) on top of the system's."""
    context = ssl.create_default_context()
    if settings.ca_file:
        context.load_verify_locations(cafile=settings.ca_file)
    return context


def _open(settings: Settings) -> smtplib.SMTP:
    where = f"{settings.host}:{settings.port}"
    try:
        if settings.security == "tls":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout,
                                                  context=tls_context(settings))
        else:
            smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
    except smtplib.SMTPResponseException:
        raise  # a greeting refusal (421/554) is sorted by its code
    except OSError as exc:
        # Refused, unreachable, timed out, TLS handshake: the server may be back later.
        raise ConnectionError(f"cannot connect to SMTP server {where} ({settings.security}): {exc}") from exc
    try:
        if settings.security == "starttls":
            smtp.starttls(context=tls_context(settings))
        if settings.username:
            smtp.login(settings.username, settings.password or "")
    except BaseException:
        smtp.close()
        raise
    return smtp


def send_messages(settings: Settings, messages: Sequence[EmailMessage]) -> None:
    """Send every message over one connection; raise PermanentFailure for 5xx, anything else to retry."""
    try:
        with _open(settings) as smtp:
            for msg in messages:
                refused = smtp.send_message(msg)  # envelope from the From and To headers
                if refused:
                    # Accepted for the other recipients: a retry would send it to them twice.
                    log.warning("email %r refused for %s", str(msg["Subject"]), _describe(refused))
                to = [addr for _, addr in getaddresses(msg.get_all("To", [])) if addr not in refused]
                log.info("email %r sent to %s", str(msg["Subject"]), ", ".join(to))
    except smtplib.SMTPRecipientsRefused as exc:
        if all(code >= 500 for code, _ in exc.recipients.values()):
            raise PermanentFailure(f"every recipient refused: {_describe(exc.recipients)}") from exc
        raise
    except smtplib.SMTPNotSupportedError as exc:
        # STARTTLS or AUTH asked for but not offered: only a change of settings fixes it.
        raise PermanentFailure(f"SMTP server {settings.host}:{settings.port}: {exc} "
                               "(check DOLIBARR_WEBHOOKS_EMAIL_SECURITY / USERNAME)") from exc
    except smtplib.SMTPResponseException as exc:
        if exc.smtp_code >= 500:
            raise PermanentFailure(f"SMTP server {settings.host}:{settings.port} answered "
                                   f"{exc.smtp_code} {_text(exc.smtp_error)}") from exc
        raise  # 4xx: temporary by definition (greylisting, mailbox busy, rate limit)


def _text(error: bytes | str) -> str:
    return error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)


def _describe(refused: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{addr}: {code} {_text(msg)}" for addr, (code, msg) in sorted(refused.items()))
