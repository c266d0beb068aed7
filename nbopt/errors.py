"""User-facing errors: one clear sentence that names the problem and what to do."""
from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class NboptError(ValueError):
    """A user mistake (bad model, data, recipe, parameter). The message is one sentence.

    The notebook magic turns it into an IPython ``UsageError`` (no traceback).
    """


class CandidateError(RuntimeError):
    """A candidate could not be built or run; it becomes a ``failed`` row, not a crash."""


class SkipCandidate(CandidateError):
    """The recipe does not apply to this model (a model that cannot take a smaller input): a ``skipped``
    row with the sentence, not a failure."""


def one_line(exc: BaseException, limit: int = 500, with_type: bool | None = None) -> str:
    """The first line of an exception's message, without terminal colour codes.

    nbopt's own errors are already sentences; a library's error gets its type in front
    (``RuntimeError: ...``) unless ``with_type`` says otherwise.
    """
    lines = _ANSI.sub("", str(exc)).strip().splitlines()
    msg = lines[0].strip() if lines else ""
    if with_type is None:
        with_type = not isinstance(exc, (NboptError, CandidateError))
    text = (f"{type(exc).__name__}: " if with_type and msg else "") + msg
    return text[:limit] or type(exc).__name__


class library_failure:
    """``with library_failure("PT2E quantization"):`` turns any library exception into a CandidateError
    ("PT2E quantization failed: IndexError: ..."); nbopt's own errors pass through unchanged."""

    def __init__(self, what: str, limit: int = 300):
        self.what, self.limit = what, limit

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, (NboptError, CandidateError)) or not isinstance(exc, Exception):
            return False
        raise CandidateError(f"{self.what} failed: {one_line(exc, self.limit, with_type=True)}.") from exc
