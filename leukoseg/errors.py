"""The one exception type that leukoseg raises for bad input."""

from __future__ import annotations

import os

__all__ = ["LeukosegError"]


class LeukosegError(Exception):
    """Bad input: a file, a data set or a model that leukoseg cannot use.

    The command line prints it as one line, ``leukoseg: error: <path>: <reason>``.

    Parameters
    ----------
    path : str or os.PathLike or None
        The file or folder at fault; ``None`` when no single file is.
    reason : str
        What is wrong, phrased so that the user knows what to do.

    Examples
    --------
    >>> str(LeukosegError("smear.jpg", "file is empty"))
    'smear.jpg: file is empty'
    """

    def __init__(self, path: str | os.PathLike[str] | None, reason: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return self.reason if self.path is None else f"{self.path}: {self.reason}"

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.path, self.reason))
