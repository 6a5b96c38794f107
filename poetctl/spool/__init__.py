"""The filesystem spool: layout, atomic group commits, reads."""

from .layout import SpoolLayout

__all__ = ["SpoolLayout"]
