"""A real SMTP server (aiosmtpd) on loopback, and certificates made per session.

Events come from the core's ``dolibarr_event`` fixture (``dolibarr_webhooks.testing``)."""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

SMTP_USER = "mailer"
SMTP_PASSWORD = "s3cret-pass"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    starttls: bool  # the session was upgraded with STARTTLS
    login: bytes | None

    @property
    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None, "no text/plain part"
        return part.get_content()

    @property
    def html(self) -> str | None:
        part = self.message.get_body(preferencelist=("html",))
        return part.get_content() if part is not None else None


@dataclass
class Collector:
    """aiosmtpd handler: keeps every message; answers RCPT/DATA as a test tells it to."""

    received: list[Received] = field(default_factory=list)
    rcpt_answers: dict[str, str] = field(default_factory=dict)  # address -> SMTP answer (e.g. "550 ...")
    data_answer: str = "250 Message accepted for delivery"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        answer = self.rcpt_answers.get(address.lower())
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if not self.data_answer.startswith("250"):
            return self.data_answer
        message = BytesParser(policy=policy.default).parsebytes(envelope.content)
        login = getattr(session.auth_data, "login", None)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message,  # type: ignore[arg-type]
                                      session.ssl is not None, login))
        return self.data_answer

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.received


class _LoopbackController(Controller):
    """Listens on an OS-chosen port: aiosmtpd's start-up probe would otherwise dial port 0."""

    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass
class SMTPServer:
    host: str
    port: int
    handler: Collector
    login: tuple[str, str] | None = None  # (user, password) when AUTH is required

    @property
    def received(self) -> list[Received]:
        return self.handler.received


def _authenticator(login: tuple[str, str]) -> Callable[..., AuthResult]:
    def check(server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            login[0].encode(), login[1].encode())
        # handled=False: aiosmtpd then answers 535 itself on a failure.
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return check


@pytest.fixture
def start_smtp() -> Iterator[Callable[..., SMTPServer]]:
    """``start_smtp(ssl_context=None, login=None, **aiosmtpd_kwargs)`` -> a running server, stopped
    after the test; ``login=(user, password)`` requires AUTH (over TLS only, aiosmtpd's default)."""
    controllers: list[Controller] = []

    def start(ssl_context: ssl.SSLContext | None = None, login: tuple[str, str] | None = None,
              **smtp_kwargs: Any) -> SMTPServer:
        if login:
            smtp_kwargs.update(auth_required=True, authenticator=_authenticator(login))
        handler = Collector()
        controller = _LoopbackController(handler, hostname="127.0.0.1", port=0, server_hostname="localhost",
                                         ssl_context=ssl_context, ready_timeout=10, **smtp_kwargs)
        controller.start()
        controllers.append(controller)
        return SMTPServer("127.0.0.1", controller.port, handler, login)

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def smtp_server(start_smtp) -> SMTPServer:
    """Plain SMTP, no TLS, no AUTH."""
    return start_smtp()


@pytest.fixture
def starttls_server(start_smtp, certificates) -> SMTPServer:
    """STARTTLS required before anything else, then AUTH (which aiosmtpd allows over TLS only)."""
    return start_smtp(tls_context=certificates.server_context(), require_starttls=True,
                      login=(SMTP_USER, SMTP_PASSWORD))


@dataclass(frozen=True)
class Certificates:
    ca_file: Path  # what the client trusts
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _certificates_with_cryptography(folder: Path) -> Certificates:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                           critical=False)
            .add_extension(x509.KeyUsage(
                digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), critical=True)
        )
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("dolibarr-webhooks test CA", ca_key, "dolibarr-webhooks test CA", ca_key, True)
    leaf = build("localhost", leaf_key, "dolibarr-webhooks test CA", ca_key, False)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "cert.pem").write_bytes(leaf.public_bytes(pem))
    (folder / "key.pem").write_bytes(leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return Certificates(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")


def _certificates_with_openssl(folder: Path) -> Certificates:
    # One self-signed certificate that is its own CA: enough for Python's verification.
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"), "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return Certificates(folder / "cert.pem", folder / "cert.pem", folder / "key.pem")


@pytest.fixture(scope="session")
def certificates(tmp_path_factory) -> Certificates:
    folder = tmp_path_factory.mktemp("email-certs")
    try:
        import cryptography  # noqa: F401
    except ImportError:
        if not shutil.which("openssl"):
            pytest.skip("neither the cryptography package nor the openssl command is available")
        return _certificates_with_openssl(folder)
    return _certificates_with_cryptography(folder)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def email_config() -> Callable[..., dict[str, Any]]:
    """``email_config(server, **settings)``: the plugin's settings as the core hands them over
    (env-style keys, JSON-decoded values), pointing at ``server``."""

    def make(server: SMTPServer, **extra: Any) -> dict[str, Any]:
        config: dict[str, Any] = {"host": server.host, "port": server.port, "security": "none",
                                  "from": "Dolibarr <erp@acme.example>", "timeout": 5}
        config.update(extra)
        return config

    return make
