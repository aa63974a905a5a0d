"""Typed errors a user can cause; the CLI and the service turn each into one clear message."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class DmpMlError(Exception):
    """Base class of every error dmp-ml raises on purpose."""


class ConfigError(DmpMlError):
    """The settings file or a settings value is invalid."""


class DataContractError(DmpMlError):
    """An input file cannot be used at all (missing columns, unreadable, empty)."""


class MappingError(DataContractError):
    """A column-mapping file is malformed or refers to columns the input lacks."""


class UnknownProfileError(DmpMlError):
    """None of the requested profile ids is known to the model bundle."""


class InsufficientDataError(DmpMlError):
    """There is not enough labelled data to train a model honestly."""


class BundleError(DmpMlError):
    """The model bundle is missing, incomplete or corrupt."""


class RequestError(DmpMlError):
    """A request parameter is invalid; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class StorageError(DmpMlError):
    """A workdir file cannot be written or read back (read-only, not a directory, corrupt).

    ``path`` names the file or directory, ``cause`` says why; nothing half-written is published.
    """

    def __init__(self, path: object, cause: str) -> None:
        super().__init__(f"{path}: {cause}")
        self.path = str(path)
        self.cause = cause


class StorageFullError(StorageError):
    """The disk (or quota) holding the workdir is full."""


_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_CAUSES = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EEXIST: "a file is in the way of a directory",
    errno.EISDIR: "a directory is in the way of a file",
}


def storage_error(exc: OSError, path: object = None) -> StorageError:
    """The typed error for an ``OSError`` met while writing (or reading) the workdir."""
    where = exc.filename or path or "the workdir"
    if exc.errno in _FULL:
        return StorageFullError(where, "no space left on the device (or quota exceeded)")
    return StorageError(where, _CAUSES.get(exc.errno or 0, exc.strerror or type(exc).__name__))


@contextmanager
def storage_errors(path: object = None) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into :func:`storage_error`'s typed error."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise storage_error(exc, path) from exc


def storage_errors_in(where: Callable[..., object]) -> Callable[[F], F]:
    """Decorator form of :func:`storage_errors`; ``where(*args, **kwargs)`` names the path
    (the workdir) when the ``OSError`` names none (e.g. a Parquet writer's)."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except StorageError:
                raise
            except OSError as exc:
                raise storage_error(exc, where(*args, **kwargs)) from exc

        return wrapper  # type: ignore[return-value]

    return decorate
