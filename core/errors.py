"""Error types of the core. Every message says what is wrong and how to fix it."""

from xaiscope.data.errors import DataError, DataFileError, UnknownBasinError


class XaiscopeError(Exception):
    """Base class of errors a user can cause (bad file, bad option, mismatched inputs)."""


class CheckpointError(XaiscopeError, ValueError):
    """A checkpoint that cannot be loaded: missing, truncated, corrupted, unsafe or mismatched."""


class UnknownModelError(CheckpointError, KeyError):
    """A model kind that is not in the registry."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


USER_ERRORS = (XaiscopeError, DataError)

__all__ = [
    "XaiscopeError", "CheckpointError", "UnknownModelError",
    "DataError", "DataFileError", "UnknownBasinError", "USER_ERRORS",
]
