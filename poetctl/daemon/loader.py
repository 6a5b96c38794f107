"""Loading handler modules: each has ``register(router)`` that subscribes handlers."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from pathlib import Path

from ..errors import InvalidData, UsageError
from ..router import EventRouter


def load_handlers(router: EventRouter, modules: Iterable[str]) -> list[str]:
    """Import each module (``pkg.mod`` or ``path/to/file.py``) and call its ``register(router)``.

    Raises :class:`UsageError` naming the module when it cannot be imported or
    has no callable ``register``.
    """
    loaded = []
    for spec in modules:
        if spec.endswith(".py"):
            path = Path(spec).resolve()
            if not path.is_file():
                raise UsageError(f"handler file {spec} does not exist")
            sys.path.insert(0, str(path.parent))
            name = path.stem
        else:
            name = spec
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            raise UsageError(f"cannot import handler module {spec!r}: {exc}") from None
        register = getattr(mod, "register", None)
        if not callable(register):
            raise UsageError(f"handler module {spec!r} has no register(router) function")
        try:
            register(router)
        except UsageError as exc:  # a bad subscription pattern or handler name
            raise UsageError(f"handler module {spec!r}: {exc.message}") from None
        except InvalidData:
            raise
        except Exception as exc:
            raise UsageError(f"register() of handler module {spec!r} failed: {type(exc).__name__}: {exc}") from None
        loaded.append(spec)
    check_upcasters(router)
    return loaded


def check_upcasters(router: EventRouter) -> None:
    """Refuse to start (:class:`~poetctl.upcasting.UpcastError`, 65) if an upcasting step is missing.

    Run once the handler modules registered their upcasters, before any event is
    handled; sets ``router.upcasters`` so handlers get every event at its newest version.
    """
    from ..upcasting import Upcasters

    if router.upcasters is None:
        router.upcasters = Upcasters(router.registry)
    router.upcasters.check()
