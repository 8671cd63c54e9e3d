"""pagerstream's error tree.

Expected outcomes (duplicate, suppressed, rate limited) are returned values, not exceptions;
these are for input or configuration that cannot be used at all.
"""

from __future__ import annotations

from collections.abc import Iterable


class PagerstreamError(Exception):
    """Base of every error pagerstream raises on purpose."""


class InvalidInput(PagerstreamError):
    """An inbound body (or a value built from it) cannot be used; `errors` lists every problem."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors: list[str] = list(errors) or ["invalid input"]
        super().__init__("; ".join(self.errors))


class CatalogError(PagerstreamError):
    """The services catalog (or a source mapping in it) is wrong.

    `problems` holds every (path, reason) found; `path` and `reason` are the first one.
    str() is one line per problem: "<file>: <path>: <reason>".
    """

    ROOT = "(root)"

    def __init__(
        self,
        file: str,
        path: str = "",
        reason: str = "",
        *,
        problems: Iterable[tuple[str, str]] = (),
    ) -> None:
        found = list(problems)
        if path or reason or not found:
            found.insert(0, (path or self.ROOT, reason or "invalid catalog"))
        self.file = file
        self.problems: list[tuple[str, str]] = [(p or self.ROOT, r) for p, r in found]
        self.path, self.reason = self.problems[0]
        super().__init__("\n".join(f"{file}: {p}: {r}" for p, r in self.problems))
