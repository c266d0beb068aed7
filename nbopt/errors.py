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


_CLASS = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")  # <class 'transformers.cache_utils.DynamicCache'>
# an installed package's file: only the part from site-packages on says anything
_INSTALLED = re.compile(r"(?:[A-Za-z]:)?[^\s'\"()]*[/\\]((?:site|dist)-packages[/\\])")
_LONG_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"()]+/){3,}([^\s/'\"()]+/[^\s/'\"()]+)")
_SUMMARY = "## Exception summary"  # torch.onnx puts the real cause under this heading
_NOISE = ("Traceback", "(Refer to the full stack trace", "File \"", "During handling of", "The above exception")


def one_line(exc: BaseException, limit: int = 500, with_type: bool | None = None) -> str:
    """One line that says what went wrong, without terminal colour codes.

    nbopt's own errors are already sentences and are kept as they are. A library's error is read for its
    real cause: the deepest exception it was raised from, the text under torch.onnx's "Exception summary",
    the first line that is not boilerplate; class reprs and installed packages' paths are shortened, and
    the type goes in front (``RuntimeError: ...``) unless ``with_type`` says otherwise.
    """
    if isinstance(exc, (NboptError, CandidateError)):
        lines = _ANSI.sub("", str(exc)).strip().splitlines()
        msg = lines[0].strip() if lines else ""
        return (f"{type(exc).__name__}: " if with_type and msg else "") + _cut(msg, limit) or type(exc).__name__
    kind, msg = _cause(exc)
    if with_type is None:
        with_type = True
    text = (f"{kind}: " if with_type and msg else "") + msg
    return _cut(text, limit) or kind


def _cause(exc: BaseException) -> tuple[str, str]:
    """(type name, useful line) of the deepest exception in ``exc``'s explicit chain that says something."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__  # raised ... from: the wrapped, real cause (never an unrelated __context__)
    for e in reversed(chain):
        kind, msg = _useful(e)
        if msg:
            return kind, msg
    return type(chain[0]).__name__, ""


def _useful(exc: BaseException) -> tuple[str, str]:
    text = _ANSI.sub("", str(exc))
    kind = type(exc).__name__
    if _SUMMARY in text:  # "<class 'RuntimeError'>: Found <class '...DynamicCache'> in output, ..."
        text = text.split(_SUMMARY, 1)[1]
        m = re.match(r"\s*<class '(?:[\w.]+\.)?(\w+)'>:\s*", text)
        if m:
            kind, text = m.group(1), text[m.end():]
    for line in text.splitlines():
        line = line.strip()
        if line.strip("-=#*~^ ") and not line.startswith(_NOISE):
            return kind, _tidy(line)
    return kind, ""


def _tidy(line: str) -> str:
    line = _CLASS.sub(r"\1", line)
    end = line.find(". ", 40)
    if len(line) > 200 and end > 0:  # a long library line: its first sentence says what; the rest is advice
        line = line[:end + 1]
    line = _INSTALLED.sub(r"\1", line)
    return _LONG_PATH.sub(lambda m: f".../{m.group(1)}" if len(m.group(0)) > 60 else m.group(0), line)


def _cut(text: str, limit: int) -> str:
    """At most ``limit`` characters, ending at a sentence where one ends late enough."""
    if len(text) <= limit:
        return text
    end = text.rfind(". ", 0, limit)
    return text[:end + 1] if end > limit // 2 else text[:limit - 3].rstrip() + "..."


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
