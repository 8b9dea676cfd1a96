"""The package version, in a module of its own so the client reads it without importing the
package's `__init__` (which imports the client: a cycle)."""

from __future__ import annotations

__version__ = "0.1.0"
