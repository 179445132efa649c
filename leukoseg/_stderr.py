"""What C libraries print on the process's stderr (file descriptor 2), caught for a block.

libjpeg reports corrupt data only as a printed warning, and TensorFlow prints start-up notes before its
logging can be configured (``TF_CPP_MIN_LOG_LEVEL`` does not reach them): both are caught here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator

__all__ = ["c_stderr_captured", "import_keras"]

#: Serialises the redirections of file descriptor 2 (a process-wide resource).
_LOCK = threading.Lock()

#: TensorFlow's start-up notes, printed before absl logging is initialised: not for users (-vv shows them).
_TF_STARTUP = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on",
               "This TensorFlow binary is optimized", "Unable to register cu", "computation placer already registered")  # fmt: skip


@contextlib.contextmanager
def c_stderr_captured(*, drop: Callable[[str], bool]) -> Iterator[list[str]]:
    """The lines written to file descriptor 2 during the block, C libraries' included, in the yielded list.

    Lines for which `drop` is false are written back to stderr after the block: output of other threads
    in the meantime is delayed, never lost. Where file descriptor 2 cannot be redirected, nothing is caught.

    Parameters
    ----------
    drop : callable
        Takes a captured line; true for the lines that must not be written back.
    """
    lines: list[str] = []
    with _LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            yield lines
            return
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield lines
            finally:
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                lines += sink.read().decode("utf-8", "replace").splitlines(keepends=True)
        rest = "".join(line for line in lines if not drop(line))
        if rest:
            os.write(2, rest.encode("utf-8", "replace"))


def import_keras():
    """``import keras``, without TensorFlow's start-up notes on stderr unless leukoseg logs at DEBUG level."""
    if "keras" in sys.modules or logging.getLogger("leukoseg").isEnabledFor(logging.DEBUG):
        import keras

        return keras
    with c_stderr_captured(drop=lambda line: any(note in line for note in _TF_STARTUP)):
        import keras
    return keras
