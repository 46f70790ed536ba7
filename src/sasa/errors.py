"""Errors the user can fix (a bad option, a missing file, a run directory in the way).

The ``sasa`` command prints a :class:`UserError` as one line ``sasa CMD: error: ...`` and exits with
code 2; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input, stated in one line that names the offending value.

    A ValueError, so that code catching bad values from the API keeps working."""
