"""Errors that are the user's to fix, as opposed to K2's bugs or an outage.

A `UserError` says in one line what is wrong and what to do ("... is missing: point it at the folder holding
trades/"). The `k2` command prints it as `error: <message>` with exit code 2 and no traceback (`k2 --debug` shows
one); library callers catch it as the ValueError it also is.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in what the user asked or gave (a path, an argument, a file that is not what it claims): the
    message is the one line to show them."""
