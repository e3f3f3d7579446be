"""Error types of the core. Every message says what is wrong and how to fix it."""

from xaiscope.data.errors import DataError, DataFileError, DataParameterError, UnknownBasinError, XaiscopeError


class CheckpointError(XaiscopeError, ValueError):
    """A checkpoint that cannot be loaded: missing, truncated, corrupted, unsafe or mismatched."""


class UnknownModelError(CheckpointError, KeyError):
    """A model kind that is not in the registry."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PathNotAllowedError(XaiscopeError):
    """A path typed into the app that lies outside the folders the app may open (see :mod:`xaiscope.core.paths`)."""


USER_ERRORS = (XaiscopeError, DataError)

__all__ = [
    "XaiscopeError", "CheckpointError", "UnknownModelError", "PathNotAllowedError",
    "DataError", "DataFileError", "DataParameterError", "UnknownBasinError", "USER_ERRORS",
]
