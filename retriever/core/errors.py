"""Domain errors. The transport maps each kind to its status code in one place (retriever/api/errors.py)."""

from __future__ import annotations


class QuarryError(Exception):
    """Base of every error a client may see; the message is shown to the client as-is."""


class InvalidArgument(QuarryError):
    """The request is malformed or out of range."""


class NotFound(QuarryError):
    """The named collection (or item) does not exist."""


class Unavailable(QuarryError):
    """Nothing can serve the request right now (no snapshot loaded, shutting down)."""


class DeadlineExceeded(QuarryError):
    """The caller's deadline expired before an answer could be produced."""


class BranchFailed(QuarryError):
    """A recall branch that is configured fail_open=false failed."""


class Unauthenticated(QuarryError):
    """The call needs credentials it did not carry (or carried wrong ones)."""


class FailedPrecondition(QuarryError):
    """The system is not in a state the call needs, e.g. a generation that failed validation."""
