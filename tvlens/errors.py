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
