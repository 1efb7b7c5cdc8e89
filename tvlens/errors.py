"""Typed errors of tvlens. Every message says what went wrong and how to fix it.

All errors derive from :class:`TvlensError`, so ``except tv.errors.TvlensError`` catches every
error tvlens raises on purpose. Each also derives from the closest built-in (``ValueError``,
``FileNotFoundError``, ...) so existing ``except ValueError`` code keeps working.
See ``docs/errors.md`` for one entry per error: symptom, cause, fix.
"""

from __future__ import annotations


class TvlensError(Exception):
    """Base class of every error tvlens raises on purpose."""


class ModelLoadError(TvlensError, RuntimeError):
    """A model spec could not be turned into a HookedTransformer (unknown name, no network, bad dir)."""


class ConfigError(TvlensError, ValueError):
    """A configuration value is out of range or of the wrong kind (LTVConfig, ToyTrainConfig, options)."""


class DatasetUnavailableError(TvlensError, RuntimeError):
    """A hub dataset could not be downloaded (typically: no network). Load it from a local file."""


class TaskNotFoundError(TvlensError, KeyError):
    """No task of that name is registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class TaskFormatError(TvlensError, ValueError):
    """Task data is malformed: a missing field, an empty task, an unreadable file."""


class LabelTokenError(TvlensError, ValueError):
    """A classification label word is not a single token on this model (or labels collide)."""


class PromptError(TvlensError, ValueError):
    """A prompt set cannot be built as asked (too few examples for the splits, bad k, bad padding)."""


class CheckpointError(TvlensError, ValueError):
    """A saved file (vector, checkpoint) is missing, corrupt or of an unknown format."""


class IncompatibleModelError(TvlensError, ValueError):
    """A vector or checkpoint was made for a model of another shape or fingerprint."""


class NonFiniteError(TvlensError, FloatingPointError):
    """A number that must be finite is nan or inf: a diverged training run, a nan vector or scale."""


class OutputExistsError(TvlensError, FileExistsError):
    """A save would replace an existing file and overwriting was not allowed."""


class DegenerateInputError(ConfigError):
    """An input of the right type that the maths cannot use: a zero vector before a solve, an empty
    list of conditions or vectors, a pool of random heads smaller than the set it is compared with."""


class OutputPathError(TvlensError, OSError):
    """An output path (``--html``, ``--out``, ``--save-vectors``, ``.save()``, ``.dashboard(path)``) cannot
    be written: its parent is a file, or not writable. Raised before any work starts."""


class TvlensWarning(UserWarning):
    """Base class of tvlens warnings: a result may be meaningless (unknown tokens, another task's vector, ...).

    Shown once per call site by Python's default filter; silence with
    ``warnings.filterwarnings("ignore", category=tv.errors.TvlensWarning)`` or turn into errors with
    ``"error"``.
    """


def warn(message: str, category: type[Warning] = TvlensWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside tvlens (so the user sees their own line)."""
    import os
    import sys
    import warnings

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep

    def internal(filename: str) -> bool:  # tvlens itself, or a runtime type-checking wrapper around it
        return (os.path.abspath(filename).startswith(package) or "beartype" in filename
                or f"{os.sep}jaxtyping{os.sep}" in filename or filename.endswith(f"{os.sep}contextlib.py"))

    level, frame = 2, sys._getframe(1)  # level 2 = warn()'s caller
    while frame is not None and internal(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


class WorkerError(TvlensError, RuntimeError):
    """A worker process of a parallel run (e.g. ``tv.train_ltv_layers(workers=2)``) failed; the message names the item."""
