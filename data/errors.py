"""Error types of the data layer. Every message says what is wrong and how to fix it."""


class XaiscopeError(Exception):
    """Base class of errors a user can cause (bad file, bad option, mismatched inputs).

    Defined here, at the bottom of the package, so that the data layer (which never imports the core) and the
    core (:mod:`xaiscope.core.errors` re-exports it) share one root: ``except XaiscopeError`` catches both.
    """


class DataError(XaiscopeError, ValueError):
    """A data file or dataset that xaiscope cannot use as it is."""


class DataFileError(DataError):
    """A file that cannot be read: the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnknownBasinError(DataError, KeyError):
    """A basin id that is not in the given CAMELS folder."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataParameterError(DataError):
    """A bad argument to a data function: the message names the parameter, the value and the fix."""

    def __init__(self, parameter: str, problem: str):
        self.parameter = parameter
        self.problem = problem
        super().__init__(f"{parameter}: {problem}")


def reader_boundary(what: str, hint: str):
    """Decorator for a reader ``fn(path, ...)``: any exception that is not already a project error becomes a
    :class:`DataFileError` naming the file, saying it cannot be read as ``what`` and how to fix it (``hint``),
    with the original exception kept as ``__cause__`` (and in the server log's traceback)."""
    import functools
    import inspect

    def decorate(fn):
        first = next(iter(inspect.signature(fn).parameters))

        @functools.wraps(fn)
        def reader(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (XaiscopeError, Warning, KeyboardInterrupt):
                raise
            except Exception as err:  # noqa: BLE001 - the boundary: whatever the libraries below raise
                path = args[0] if args else kwargs.get(first, "(default file)")
                detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
                raise DataFileError(
                    path, f"cannot be read as {what} ({type(err).__name__}{': ' + detail if detail else ''}); "
                          f"{hint}") from err

        return reader

    return decorate
