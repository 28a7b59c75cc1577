"""Serving the owner's page: werkzeug's threaded WSGI server in a background thread, on the configured
address only (loopback by default), started by ``vehicle-agent run`` or ``vehicle-agent owner serve``."""

from __future__ import annotations

import logging
import threading
from typing import Any

from agent.ownerpage.backend import OwnerBackend
from agent.ownerpage.config import OwnerPageConfig, owner_page_config
from agent.ownerpage.pairing import Pairing

log = logging.getLogger(__name__)


class OwnerPageServer:
    def __init__(self, agent_config: Any, page: OwnerPageConfig | None = None, port: int | None = None) -> None:
        from werkzeug.serving import make_server

        from agent.ownerpage.app import create_app

        self.page = page or owner_page_config(agent_config)
        backend = OwnerBackend(agent_config)
        self.pairing = Pairing(backend.state_dir)
        wanted = self.page.port if port is None else port
        # Bound first (port 0: the kernel picks one), so the app knows the port it answers under.
        self._server = make_server(self.page.listen, wanted, _NotYet(), threaded=True)
        self.port = self._server.server_port
        self._server.app = create_app(backend, self.pairing, self.page, self.port)
        self._thread: threading.Thread | None = None
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request lines in the journal

    @property
    def url(self) -> str:
        host = f"[{self.page.listen}]" if ":" in self.page.listen else self.page.listen
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="owner-page", daemon=True)
        self._thread.start()
        log.info("owner page on %s (pair a screen with `vehicle-agent owner pair`)", self.url)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _NotYet:
    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"starting"]


def start_owner_page(agent_config: Any) -> OwnerPageServer | None:
    """The page for ``vehicle-agent run`` when the configuration enables it; None (said in the log) when it
    is off or the ``owner`` extra is not installed."""
    page = owner_page_config(agent_config)
    if not page.enabled:
        return None
    try:
        server = OwnerPageServer(agent_config, page)
    except ImportError as exc:
        log.warning("owner page off: it needs the 'owner' extra (pip install 'vehicle-edge-agent[owner]'): %s", exc)
        return None
    except (OSError, SystemExit) as exc:  # werkzeug's make_server calls sys.exit(1) when the port is taken
        log.warning("owner page off: cannot listen on %s:%d: %s", page.listen, page.port,
                    "address already in use" if isinstance(exc, SystemExit) else exc)
        return None
    server.start()
    return server
