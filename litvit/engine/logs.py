"""The output folder of a run: its lock, ``log.jsonl``, ``metrics.csv`` and ``curves.png``."""
import contextlib
import csv
import fcntl
import io
import json
import os
import socket
from pathlib import Path
from typing import List, Optional, Sequence, Union

from ..errors import OutputLockedError
from tqdm import tqdm

from ..utils import atomic_write

__all__ = ["LOCK", "OutputLock", "OutputLockedError", "plot_curves", "progress"]


LOCK = ".lock"


class OutputLock:
    """``OUTPUT/.lock``: one writer per output folder.

    The file holds the owner's pid and host; it is locked with ``fcntl.flock`` for as long as the
    run lives, so the kernel releases it when the process dies, even by SIGKILL: a lock file left
    behind by a dead process is stale and taken over (with a note), a live one refuses the second
    writer. Released (and the file removed) by :meth:`release`; a folder the lock created and
    nothing else filled is removed too.

    Examples::
        >>> import tempfile
        >>> lock = OutputLock(tempfile.mkdtemp()).acquire()
        >>> lock.release()
    """

    def __init__(self, folder: Union[str, Path]):
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.fd: Optional[int] = None
        self.stale_owner: Optional[str] = None
        self._created = False

    def acquire(self) -> "OutputLock":
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"output folder {self.folder} is a file")
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.read(fd, 200).decode(errors="replace").split() or ["unknown"]
                os.close(fd)
                raise OutputLockedError(
                    f"{self.folder} is in use by another litvit process (pid {owner[0]}"
                    f"{' on ' + owner[1] if len(owner) > 1 else ''}; lock file {self.path}): wait for it to end "
                    f"or pick another --output") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its previous owner removed while we opened it
                break
            os.close(fd)
        else:
            raise OutputLockedError(f"cannot lock {self.path}: it keeps being replaced by another process")
        previous = os.read(fd, 200).decode(errors="replace").strip()
        self.stale_owner = previous.split()[0] if previous else None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)  # closing releases the flock
        self.fd = None
        if self._created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty: the run failed before writing anything


def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), fsync=False)


class _RunLog:
    """``log.jsonl`` (append) and ``metrics.csv`` (rewritten each epoch) in the output folder; rank 0 only."""

    def __init__(self, out: Path, enabled: bool, resume_step: Optional[int]):
        self.jsonl = out / "log.jsonl"
        self.csv = out / "metrics.csv"
        self.enabled = enabled
        if enabled and self.jsonl.exists():
            # keep only what the checkpoint we continue from had seen; a fresh run starts a new log
            keep = []
            if resume_step is not None:
                for line in self.jsonl.read_text(encoding="utf-8").splitlines():
                    with contextlib.suppress(json.JSONDecodeError):
                        rec = json.loads(line)
                        if rec.get("step", 0) <= resume_step:
                            keep.append(line)
            _write_text_atomic(self.jsonl, "".join(k + "\n" for k in keep))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.jsonl, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def write_csv(self, history: List[dict]) -> None:
        if not self.enabled or not history:
            return
        keys = list(dict.fromkeys(k for rec in history for k in rec))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
        _write_text_atomic(self.csv, buf.getvalue())

    def records(self) -> List[dict]:
        if not self.jsonl.exists():
            return []
        out = []
        for line in self.jsonl.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out


def plot_curves(log_path: Union[str, Path], out_path: Union[str, Path], metrics: Sequence[str] = ("score",)) -> Path:
    """Draw training loss, evaluation metrics and learning rate from a ``log.jsonl`` into a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = [json.loads(l) for l in Path(log_path).read_text(encoding="utf-8").splitlines() if l.strip()]
    steps = [r for r in recs if r.get("event") == "train"]
    epochs = [r for r in recs if r.get("event") == "epoch"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    if steps:
        ax.plot([r["epoch_f"] for r in steps], [r["loss"] for r in steps], lw=1, alpha=0.6, label="train (steps)")
    ep_train = [r for r in epochs if "train_loss" in r]
    if ep_train:
        ax.plot([r["epoch"] for r in ep_train], [r["train_loss"] for r in ep_train], "o-", label="train (epoch)")
    ep_val = [r for r in epochs if "val_loss" in r]
    if ep_val:
        ax.plot([r["epoch"] for r in ep_val], [r["val_loss"] for r in ep_val], "s-", label="val")
    ax.set(xlabel="epoch", ylabel="loss", title="loss")
    ax.legend()
    ax = axes[1]
    for m in metrics:
        for prefix, style in (("val_", "o-"), ("ema_", "x--")):
            pts = [r for r in epochs if prefix + m in r]
            if pts:
                ax.plot([r["epoch"] for r in pts], [r[prefix + m] for r in pts], style, label=prefix + m)
    ax.set(xlabel="epoch", title="evaluation")
    if ax.lines:
        ax.legend()
    ax = axes[2]
    if steps:
        ax.plot([r["epoch_f"] for r in steps], [r["lr"] for r in steps])
    ax.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    fig.tight_layout()
    try:
        return atomic_write(out_path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def progress(iterable, enabled: bool, desc: str, total: Optional[int] = None):
    """A tqdm bar over ``iterable`` on stderr, removed when done, where ``enabled`` (rank 0 with
    progress bars on); else ``iterable`` itself."""
    if not enabled:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
