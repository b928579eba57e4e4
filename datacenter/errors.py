"""The one error a request can meet in the data center's decisions."""

from __future__ import annotations


class RequestError(ValueError):
    """The request cannot be served as sent; the message says why (it reaches the edge)."""
