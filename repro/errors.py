"""Named errors. Every error the package raises on bad input is one of these, with a message that
says what was wrong and what to do about it."""


class ReproError(Exception):
    """Base class of all errors raised by repro on bad input or unusable state."""


class UnknownNameError(ReproError, ValueError):
    """A dataset, model, profile, notebook or option name that repro does not know."""


class DataUnavailableError(ReproError, RuntimeError):
    """The data asked for is neither embedded nor cached, and cannot be downloaded now."""


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
