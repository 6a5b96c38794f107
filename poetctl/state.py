"""Compatibility: the spool's function state and feedback stores moved to :mod:`poetctl.backends.fs.storage`.

Handlers get their stores from :attr:`poetctl.router.EventRouter.stores`
(:mod:`poetctl.storage`); this module only keeps old imports working.
"""

from __future__ import annotations

from .backends.fs.storage import FeedbackStore, StateStore, read_json, updated_at

__all__ = ["FeedbackStore", "StateStore", "read_json", "updated_at"]
