"""One exception hierarchy: every error dinotiles raises on purpose says its HTTP status.

Like rio-tiler's ``RioTilerError`` / TiTiler's ``TilerError``: the server maps ``DinotilesError``
to ``exc.status`` in one handler (``dinotiles.server.errors``), so a new error class cannot be
forgotten in a status table, and the CLI turns the same classes into one line and exit 2.
"""

from __future__ import annotations


class DinotilesError(Exception):
    """Base class; ``status`` is the HTTP status a client gets."""

    status = 500


class BadInput(DinotilesError):
    """The client's request or file is wrong (400)."""

    status = 400


class Forbidden(DinotilesError):
    """Not allowed to be read (403)."""

    status = 403


class NotFound(DinotilesError):
    """Nothing there (404)."""

    status = 404


class TooLarge(DinotilesError):
    """The request body is over the limit (413)."""

    status = 413


class Unavailable(DinotilesError):
    """Busy: retry after ``retry_after`` seconds (503)."""

    status = 503
    retry_after = 2


class UpstreamFailure(DinotilesError):
    """A remote host (COG store, STAC API) failed (502)."""

    status = 502


class UpstreamSlow(DinotilesError):
    """A remote host, or the request itself, took too long (504)."""

    status = 504
