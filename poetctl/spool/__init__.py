"""The filesystem spool's public name: :class:`SpoolLayout`.

The implementation lives in :mod:`poetctl.backends.fs`; this package stays so
that ``from poetctl.spool import SpoolLayout`` keeps working.
"""

from ..backends.fs.layout import SpoolLayout

__all__ = ["SpoolLayout"]
