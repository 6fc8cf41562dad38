"""The harness's error types, apart from the method contract so that the commands that need
neither torch nor a method (``quantbench plan``, ``validate``'s parsing) do not import torch."""


class ConfigError(ValueError):
    """Invalid configuration: the message names the key path and what is allowed."""


class JobFailed(RuntimeError):
    """A job whose run is recorded as failed (e.g. diverged): it must exit non-zero."""


class ExamplesError(ValueError):
    """Per-example results that cannot be used: unreadable, or not paired with another's."""


class TrackingError(RuntimeError):
    """The tracking store cannot be used: unreachable, or it refused this writer."""
