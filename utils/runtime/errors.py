"""The project's user-error classes: what a script's command line reports in one line.

A user's mistake (a setting, a path, a file, the data, a full disk) raises one of these, and
``utils.runtime.config.command_line`` ends the run with its message and exit code 1. Every other
exception is a bug, and keeps its full traceback: a ``ValueError`` from inside transformers, scipy's
matcher or a shape mismatch in the model is never turned into one line.

Each class also derives from the built-in error it replaces (``ValueError``, ``FileNotFoundError``,
``OSError``, ``RuntimeError``), so code that catches those still catches these.
"""

from __future__ import annotations

import errno


class UserError(Exception):
    """A setting, file or input a run cannot use; ``command_line`` ends the run with its message."""


class SettingError(UserError, ValueError):
    """A setting's value that cannot work (a wrong type, a value out of range, a conflict)."""


class DataError(UserError, ValueError):
    """A data file or folder the settings name that cannot be used as it is (bad JSON, no images left)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder a setting names that does not exist."""


# The errno values of a write that failed for want of room: the disk, the quota, or a file-size limit.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class FileWriteError(UserError, OSError):
    """A file the run writes that could not be written (full disk, quota, permissions); names the file."""

    @classmethod
    def of(cls, path: str, error: OSError) -> "FileWriteError":
        reason = error.strerror or str(error) or type(error).__name__
        name = errno.errorcode.get(error.errno or 0)
        advice = ("free some space (or choose another OUTPUT_DIR) and run again" if error.errno in NO_ROOM else
                  "check the folder's permissions (or choose another OUTPUT_DIR) and run again")
        written = cls(f"could not write {path}: {reason}" + (f" ({name})" if name else "")
                      + f"; the file it would replace, if any, is unchanged: {advice} "
                      "(a training run continues from its last checkpoint with --RESUME=True)")
        written.errno = error.errno
        return written


class OutOfMemoryAtOneImageError(UserError, RuntimeError):
    """Out of memory with one image per micro-batch: only smaller settings help."""
