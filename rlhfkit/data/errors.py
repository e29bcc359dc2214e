"""`DataError`: a user's data mistake, told in one readable message (no traceback wall).

Every message names where the problem is (file and line, or row index), the field, what was
expected, and what to do. The CLI prints `str(err)` only.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data: the message names the file, the line (or row index), the field and the fix."""


def describe(value, limit: int = 60) -> str:
    """A short description of a value for error messages: its type and a clipped repr."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"


def field_error(where: str, field: str, expected: str, value, fix: str = "Fix the value in this row.") -> DataError:
    """A `DataError` for a field whose value has the wrong type or content."""
    return DataError(f"{where}: field {field!r}: expected {expected}, got {describe(value)}. {fix}")
