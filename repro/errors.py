"""Named errors. Every error the package raises on bad input is one of these, with a message that
says what was wrong and what to do about it."""


class ReproError(Exception):
    """Base class of all errors raised by repro on bad input or unusable state."""


class UnknownNameError(ReproError, ValueError):
    """A dataset, model, profile, notebook or option name that repro does not know."""


class DataUnavailableError(ReproError, RuntimeError):
    """The data (or model weights) asked for is neither embedded nor cached, and cannot be
    downloaded now."""


class EmptyDatasetError(ReproError, ValueError):
    """A dataset (or what is left of it after removing ids) has no examples."""


class LabelRangeError(ReproError, ValueError):
    """Labels fall outside the classes the model's head can predict."""


class CheckpointError(ReproError, RuntimeError):
    """A checkpoint folder is missing, empty, incomplete, or belongs to another model."""


class NonFiniteLossError(ReproError, FloatingPointError):
    """Training produced a NaN or infinite loss."""


class ConfigMismatchError(ReproError, ValueError):
    """Cached or saved artefacts were made with another configuration and must not be mixed."""


class NotFittedError(ReproError, RuntimeError):
    """An estimator was asked for scores before ``fit`` computed what they need."""


class NonFiniteInputError(ReproError, ValueError):
    """Inputs (or a number read from a file, such as a checkpoint's learning rate) are NaN or
    infinite; the message names the example ids or the file."""


class DuplicateIdError(ReproError, ValueError):
    """Example ids are not unique; every example needs its own stable id."""


class InvalidParameterError(ReproError, ValueError):
    """A parameter has a value or type that cannot work (e.g. ``n=2.5``, ``k=0``, negative damping,
    ``--set epochs=abc``); the message names the parameter and what it accepts."""


class ConvergenceError(ReproError, RuntimeError):
    """An iterative solver did not converge, or a linear system is singular / not positive
    definite, so its result would not be the quantity asked for."""


class RunLockedError(ReproError, RuntimeError):
    """Another process is running the same notebook and profile into the same folder."""


class RunInterruptedError(KeyboardInterrupt):
    """``repro run`` was stopped by SIGINT or SIGTERM; the stopped run's results were discarded.

    A ``KeyboardInterrupt`` (not a :class:`ReproError`), so that no ``except Exception`` on the way
    up (papermill, nbclient, user code) can swallow it."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted by signal {signum}")
        self.signum = signum


class UnsafePathError(ReproError, ValueError):
    """A file inside a run or results folder is a symlink or points outside that folder."""
