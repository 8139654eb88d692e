"""The error types every floor of litvit may raise (models, data, engine, tasks, tools, cli).

Kept in one bottom-floor module so that no floor imports an upper one to name an error. Each is a
``ValueError`` or an ``OSError`` (or both), so the CLI turns it into one line and exit code 2.
"""

__all__ = ["CheckpointMismatchError", "CheckpointWriteError", "OutputLockedError", "UnreadableImageError", "CLIError"]


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model it is loaded into (other model, other size), or a file
    is not a readable checkpoint."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, quota, permissions); the message says whether
    the previous checkpoint at that path is kept."""


class OutputLockedError(OSError):
    """Another process is writing to the same output folder."""


class UnreadableImageError(OSError, ValueError):
    """An image file that cannot be decoded; the message names the file.

    Both an ``OSError`` (what PIL raises for a bad file) and a ``ValueError`` (bad input data), so
    callers catching either see it. When raised inside a DataLoader worker, PyTorch re-creates the
    exception in the main process with the worker's whole traceback as its message; ``str()``
    still gives the one useful line.
    """

    def __str__(self) -> str:
        msg = str(self.args[0]) if len(self.args) == 1 else super().__str__()
        lines = [line.strip() for line in msg.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else msg
        for prefix in (f"{type(self).__module__}.{type(self).__name__}: ", f"{type(self).__name__}: "):
            if last.startswith(prefix):
                last = last[len(prefix):]
        return last


class CLIError(Exception):
    """An expected failure of a command: printed as one line, exit code 2."""
