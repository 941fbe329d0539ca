"""One exception family, so callers (and the CLI) can tell our clear errors from bugs."""


class CnnrtError(Exception):
    """Base class: every message names the file or object at fault and what was expected."""


class FormatError(CnnrtError, ValueError):
    """A file or tensor is not what its format promises (magic, size, shape, values)."""


class BackendUnavailable(CnnrtError, RuntimeError):
    """A backend was asked for but cannot run here (missing package or device)."""
