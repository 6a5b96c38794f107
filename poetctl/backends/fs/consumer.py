"""The filesystem spool's :class:`poetctl.transport.Consumer` (one per daemon). Work in progress."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .transport import FsTransport


class FsConsumer:
    """Not yet: ``poetctl daemon`` still drives the spool itself (daemon/core.py)."""

    def __init__(self, transport: FsTransport, name: str | None = None, **options: Any) -> None:
        raise NotImplementedError("the filesystem consumer is not in place yet")
