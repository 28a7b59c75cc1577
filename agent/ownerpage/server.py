"""Serving the owner's page: werkzeug's threaded WSGI server in a background thread, on the configured
address only (loopback by default), started by ``vehicle-agent run`` or ``vehicle-agent owner serve``.

The address is bound at once (a port in use is said at start), but Flask, Jinja2 and werkzeug (~8 MB of
the service's memory, whose budget is 60 MB) are imported when the first connection arrives: the page is
opened now and then, the service runs for months.  That connection waits in the listen queue meanwhile
and is the first one werkzeug serves.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import logging
import select
import socket
import threading
from typing import Any

from agent.ownerpage.config import OwnerPageConfig, owner_page_config

log = logging.getLogger(__name__)

WEB_STACK = ("flask", "werkzeug", "jinja2")  # the ``owner`` extra
IDLE_POLL_S = 1.0  # how often the thread waiting for the first visitor looks at ``stop``


class OwnerPageServer:
    def __init__(self, agent_config: Any, page: OwnerPageConfig | None = None, port: int | None = None) -> None:
        """Bind the page's address; raises ImportError without the ``owner`` extra, OSError when the address
        cannot be bound (``errno.EADDRINUSE``: the port is taken)."""
        missing = [name for name in WEB_STACK if importlib.util.find_spec(name) is None]
        if missing:
            raise ImportError(f"no module named {missing[0]!r}")
        self.agent_config = agent_config
        self.page = page or owner_page_config(agent_config)
        wanted = self.page.port if port is None else port
        family = socket.AF_INET6 if ":" in self.page.listen else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug does
            self._listener.bind((self.page.listen, wanted))
            self._listener.listen(128)
        except BaseException:
            self._listener.close()
            raise
        self.port = self._listener.getsockname()[1]  # port 0: the kernel picked one; the app answers under it
        self._server: Any = None  # werkzeug's, made at the first connection
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.page.listen}]" if ":" in self.page.listen else self.page.listen
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="owner-page", daemon=True)
        self._thread.start()
        log.info("owner page on %s (pair a screen with `vehicle-agent owner pair`)", self.url)

    def _serve(self) -> None:
        while not self._stopping.is_set():  # wait for the first visitor without the web stack
            try:
                ready, _, _ = select.select([self._listener], [], [], IDLE_POLL_S)
            except (OSError, ValueError):  # closed by stop()
                return
            if ready:
                break
        with self._lock:
            if self._stopping.is_set():
                return
            try:
                self._server = self._make_server()
            except Exception:
                log.exception("owner page off: it could not be started")
                return
        self._server.serve_forever()

    def _make_server(self) -> Any:
        from werkzeug.serving import make_server

        from agent.ownerpage.app import create_app
        from agent.ownerpage.backend import OwnerBackend
        from agent.ownerpage.pairing import Pairing

        backend = OwnerBackend(self.agent_config)
        app = create_app(backend, Pairing(backend.state_dir), self.page, self.port)
        # werkzeug serves on a duplicate of our socket (fd=): the connection waiting in its queue included.
        server = make_server(self.page.listen, self.port, app, threaded=True, fd=self._listener.fileno())
        self._listener.close()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request lines in the journal
        return server

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            server = self._server
        if server is not None:
            server.shutdown()
            server.server_close()
        with contextlib.suppress(OSError):
            self._listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


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
    except OSError as exc:
        log.warning("owner page off: cannot listen on %s:%d: %s", page.listen, page.port,
                    "address already in use" if exc.errno == errno.EADDRINUSE else exc)
        return None
    server.start()
    return server
