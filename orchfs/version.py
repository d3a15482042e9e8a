"""The version of orchfs, in the one place that the package, ``meta.json`` and error
messages read it from (importing it loads nothing else)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
