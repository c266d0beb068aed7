"""Keep third-party chatter out of the notebook and the terminal, and in the candidate's log.

ExecuTorch, the TFLite converter and onnxruntime print from C++ straight to file descriptors 1 and 2,
where Python's ``sys.stdout``/``sys.stderr`` redirection cannot reach (and ipykernel forwards those
descriptors into the cell). ``quiet()`` therefore points the descriptors themselves at a scratch file,
plus Python's streams, warnings and the chatty loggers, and appends what it caught to the log of the
candidate being built (``candidate_log``), so a failure can still be read in full.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import io
import logging
import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Iterator

_LOGGERS = ("torchao", "torch.utils._pytree", "torch._export", "torch.export", "torch.onnx", "executorch",
            "torch._dynamo", "torch.fx.experimental.symbolic_shapes", "onnxruntime", "onnxscript", "tensorflow",
            "absl", "coremltools", "root")
_log_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("nbopt_log", default=None)
_lock = threading.RLock()  # file descriptors are process-wide: one capture at a time
_depth = 0


@contextlib.contextmanager
def candidate_log(path: Path | None) -> Iterator[Path | None]:
    """Everything ``quiet()`` catches inside this block is appended to ``path``."""
    token = _log_path.set(path)
    try:
        yield path
    finally:
        _log_path.reset(token)


def write_log(text: str) -> None:
    """Append a line of nbopt's own to the current candidate's log (a traceback, a note)."""
    path = _log_path.get()
    if path is not None and text:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8", errors="replace") as f:
            f.write(text if text.endswith("\n") else text + "\n")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Capture fd 1/2, Python's streams, warnings and library loggers for the duration of the block."""
    global _depth
    with _lock:
        if _depth:  # nested: the outer capture is already in place
            _depth += 1
            try:
                yield
            finally:
                _depth -= 1
            return
        _depth = 1
        try:
            with tempfile.TemporaryFile() as sink, _python_streams() as py, _silenced_loggers():
                saved = _redirect_fds(sink.fileno())
                try:
                    yield
                finally:
                    _restore_fds(saved)
                    sink.seek(0)
                    caught = sink.read().decode("utf-8", "replace") + py.getvalue()
                write_log(caught)
        finally:
            _depth = 0


@contextlib.contextmanager
def _python_streams() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        warnings.simplefilter("ignore")
        yield buf


@contextlib.contextmanager
def _silenced_loggers() -> Iterator[None]:
    loggers = [logging.getLogger(n) if n != "root" else logging.getLogger() for n in _LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _flush_c() -> None:
    """Flush C stdio buffers so that buffered C/C++ output lands in the sink, not after the restore."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # not a POSIX libc: nothing buffered that we can reach
        pass


def _redirect_fds(target: int) -> list[tuple[int, int]]:
    _flush_c()
    for stream in (sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    for fd in (1, 2):
        try:
            saved.append((fd, os.dup(fd)))
            os.dup2(target, fd)
        except OSError:  # no such descriptor (some embedded interpreters): nothing to capture there
            pass
    return saved


def _restore_fds(saved: list[tuple[int, int]]) -> None:
    _flush_c()
    for fd, copy in saved:
        os.dup2(copy, fd)
        os.close(copy)
