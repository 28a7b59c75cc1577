"""Named commands of the control socket.  Later stages register their own (status, reload, ...)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

Handler = Callable[..., Any]


class CommandRegistry(Mapping[str, Handler]):
    """``name -> handler(**args) -> JSON-able result``.  A handler raises ``ValueError`` (or a
    subclass) for a request the user can fix; its message goes back to the client as the error."""

    def __init__(self, handlers: Mapping[str, Handler] | None = None) -> None:
        self._handlers: dict[str, Handler] = {}
        for name, handler in (handlers or {}).items():
            self.register(name, handler)

    def register(self, name: str, handler: Handler) -> None:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"command names are single words, got {name!r}")
        if name in self._handlers:
            raise ValueError(f"command {name!r} is already registered")
        self._handlers[name] = handler

    def update(self, handlers: Mapping[str, Handler]) -> None:
        for name, handler in handlers.items():
            self.register(name, handler)

    def __getitem__(self, name: str) -> Handler:
        return self._handlers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._handlers)

    def __len__(self) -> int:
        return len(self._handlers)
