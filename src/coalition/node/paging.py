"""The one rule for a page's size: every paged read (history, lots, statements,
equivocations, agreements) takes 1..``MAX_PAGE`` items and costs one page, however long
the list behind it is; its cursor names the last item of the page before."""

from __future__ import annotations

from coalition.errors import InvalidArgument

MAX_PAGE = 1000
"""Most items one page may hold."""


def check_page_size(limit: object) -> int:
    """``limit`` if it is an int in 1..MAX_PAGE; InvalidArgument saying so otherwise."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(f"limit must be 1..{MAX_PAGE}, got {limit!r}")
    return limit
