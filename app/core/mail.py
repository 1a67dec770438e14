"""Outgoing email: SMTP when configured, otherwise the server log plus a readable outbox.

The outbox (``<data-dir>/outbox/*.json``) is what makes signup → activate work on a fresh install
with no mail server: ``wrenn-cp outbox`` prints the messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
from email.message import EmailMessage
from pathlib import Path

from app.core import clock, ids
from app.core.config import Settings

log = logging.getLogger("wrenn.mail")


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def send(self, to: str, subject: str, body: str) -> None:
        if self.settings.smtp_host:
            try:
                await asyncio.to_thread(self._send_smtp, to, subject, body)
            except (OSError, smtplib.SMTPException):
                # Mail trouble must never fail the request that caused it.
                log.exception("smtp delivery to %s failed", to)
            return
        self._write_outbox(to, subject, body)

    def _send_smtp(self, to: str, subject: str, body: str) -> None:
        s = self.settings
        msg = EmailMessage()
        msg["From"] = s.smtp_from
        msg["To"] = to
        msg["Subject"] = subject
        msg.set_content(body)
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=15) as smtp:
            if s.smtp_starttls and smtp.has_extn("starttls"):
                smtp.starttls()
            if s.smtp_username:
                smtp.login(s.smtp_username, s.smtp_password)
            smtp.send_message(msg)

    def _write_outbox(self, to: str, subject: str, body: str) -> None:
        outbox = self.settings.outbox_dir
        outbox.mkdir(parents=True, exist_ok=True)
        record = {"to": to, "subject": subject, "body": body, "sent_at": clock.iso(clock.now())}
        name = f"{clock.now().strftime('%Y%m%dT%H%M%S%f')}-{ids.random_hex(4)}.json"
        (outbox / name).write_text(json.dumps(record))
        log.info("email (no SMTP configured) to=%s subject=%r\n%s", to, subject, body)


def read_outbox(outbox: Path) -> list[dict[str, str]]:
    if not outbox.exists():
        return []
    return [json.loads(p.read_text()) for p in sorted(outbox.glob("*.json"))]
