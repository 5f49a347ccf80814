"""The webhook dispatcher, a thread in every worker process: every second, turn jobs and sweeps that ended into
deliveries and send the due ones (api/core/notify.py). Any number may run at once: both steps claim their rows."""

from __future__ import annotations

import logging
import threading

import httpx

from api.core import notify
from api.core.db import session_factory
from api.core.settings import Settings

log = logging.getLogger(__name__)
INTERVAL_S = 1.0


class Notifier:
    def __init__(self, *, settings: Settings) -> None:
        self.sessions = session_factory(settings.resolved_database_url)
        self.allow = notify.allowed_networks(settings.webhook_allow)

    def run_once(self, client: httpx.Client) -> None:
        with self.sessions() as session:
            notify.make_deliveries(session=session)
            notify.deliver_due(session=session, allow=self.allow, client=client)

    def run_forever(self, stop: threading.Event) -> None:
        with httpx.Client() as client:
            while not stop.wait(INTERVAL_S):
                try:
                    self.run_once(client)
                except Exception:  # the database may be down: a dead thread would never notify again
                    log.exception("notifier: pass failed; trying again")

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run_forever, args=(stop,), name="vitq-notifier", daemon=True)
        thread.start()
        return thread
