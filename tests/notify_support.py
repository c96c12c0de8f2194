"""Real servers for the operator's notifications, on 127.0.0.1: an SMTP server (aiosmtpd) that keeps every
mail it receives, and an HTTP endpoint for heartbeat pings that keeps every request, or never answers."""

from __future__ import annotations

import email
import email.message
import email.policy
import http.server
import threading
import uuid
from dataclasses import dataclass

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.harness import PROJECT_CFG
from tests.luigid_support import free_port

RECEIVER = "ops@example.org"
# What docs/operations.md and deploy/central.cfg show: a relay on port 25 and a healthchecks.io check.
EXAMPLE_RELAY, EXAMPLE_PING_URL = "smtp.example.org", "https://hc-ping.com/0f8e4a52-5d2a-4c6e-9d1b-3f5e2a7c9b10"


class MailServer:
    """aiosmtpd on a free port; `mails` are the messages as received. With `password`, it offers AUTH (without
    TLS, as a relay on the loopback may) and refuses any other password."""

    def __init__(self, password: str | None = None):
        self.mails: list[email.message.EmailMessage] = []
        self.port = free_port()
        auth = {"authenticator": self._authenticate, "auth_require_tls": False} if password else {}
        self._password = password
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, **auth)

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd's handler hook
        self.mails.append(email.message_from_bytes(envelope.content, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password.decode() == self._password
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself

    def __enter__(self) -> MailServer:
        self._controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self._controller.stop()


def text(mail: email.message.EmailMessage) -> str:
    """A received mail's text (Luigi sends a multipart message with one text part)."""
    part = mail.get_body(("plain", "html"))
    assert part is not None, mail
    return part.get_content()


@dataclass(frozen=True)
class Ping:
    method: str
    path: str
    body: str


class PingServer:
    """A heartbeat endpoint (healthchecks.io's shape: /<uuid>, /<uuid>/start, /<uuid>/fail) that answers 200
    "OK", or with `hang` reads the request and never answers."""

    def __init__(self, hang: bool = False):
        self.pings: list[Ping] = []
        self.secret = str(uuid.uuid4())
        self._hang, self._stop = hang, threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8")
                owner.pings.append(Ping(self.command, self.path, body))
                if owner._hang:
                    owner._stop.wait()
                    return
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_GET = do_POST

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The ping URL to configure: its last path segment is the secret."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/ping/{self.secret}"

    def paths(self) -> list[str]:
        """What was pinged, relative to the ping URL: "/start", "" (success) or "/fail"."""
        prefix = f"/ping/{self.secret}"
        return [ping.path.removeprefix(prefix) for ping in self.pings]

    def __enter__(self) -> PingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()


def notify_cfg(mail: MailServer | None, ping_url: str, email_mode: str = "failures", timeout: float = 10) -> str:
    """The sections a project's overlay gets: the run's mail to RECEIVER through `mail` (None: a port where
    nothing listens), the heartbeat to `ping_url`."""
    port = mail.port if mail else free_port()
    return (
        f"[email]\nreceiver = {RECEIVER}\nsender = cms-hospitals@example.org\n\n"
        f"[smtp]\nhost = 127.0.0.1\nport = {port}\n\n"
        f"[notify]\nemail = {email_mode}\nping_url = {ping_url}\ntimeout = {timeout:g}\n"
    )


def made_local(example: str, smtp_port: int, ping_url: str) -> str:
    """The documented or shipped example settings, pointed at the test's SMTP port and ping URL."""
    assert EXAMPLE_RELAY in example and "port = 25" in example and EXAMPLE_PING_URL in example, example
    example = example.replace(EXAMPLE_RELAY, "127.0.0.1").replace("port = 25", f"port = {smtp_port}")
    return example.replace(EXAMPLE_PING_URL, ping_url)


def shipped_example() -> str:
    """deploy/central.cfg's commented-out [email], [smtp] and [notify] lines, uncommented."""
    lines = (PROJECT_CFG.parent / "deploy" / "central.cfg").read_text(encoding="utf-8").splitlines()
    return "\n".join(line[2:] for line in lines[lines.index("# [email]") :] if line.startswith("# ")) + "\n"
