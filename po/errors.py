"""User-facing errors: one sentence that says what is wrong and what to do, printed without a traceback."""

from __future__ import annotations


class POError(Exception):
    """An error in the user's input (config, data, environment) that the CLI reports in one line."""


class ConfigError(POError):
    """A bad or incompatible configuration, found before any model is loaded."""


class DataError(POError):
    """A bad data row: the message names the file (or dataset), the row and the field."""

    def __init__(self, where: str, message: str, field: str | None = None):
        self.where, self.field = where, field
        at = f"{where}, field '{field}'" if field else where
        super().__init__(f"{at}: {message}")
