"""User-facing errors: one clear sentence that names the problem and what to do."""


class NboptError(ValueError):
    """A user mistake (bad model, data, recipe, parameter). The message is one sentence.

    The notebook magic turns it into an IPython ``UsageError`` (no traceback).
    """


class CandidateError(RuntimeError):
    """A candidate could not be built or run; it becomes a ``failed`` row, not a crash."""
