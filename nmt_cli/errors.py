"""Problems the user can fix. Raised deep, formatted once in cli."""

from __future__ import annotations


class NmtError(Exception):
    """A problem the user can fix; str() gives 'path:line: message'."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        super().__init__(message)
        self.message, self.path, self.line = message, path, line

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.path, self.line) if p is not None)
        return f"{where}: {self.message}" if where else self.message


class InputError(NmtError):
    """A text or corpus file is missing, unreadable or malformed."""


class ConfigError(NmtError):
    """An option or configuration value is invalid."""


class CheckpointError(NmtError):
    """A model or trainer-state file is not what it should be."""
