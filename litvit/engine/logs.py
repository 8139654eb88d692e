"""The output folder of a run: its lock, ``log.jsonl``, ``metrics.csv``, ``curves.png`` and the
optional mirrors of ``log.jsonl`` (TensorBoard's ``tb/``, an offline Weights & Biases run in ``wandb/``)."""
import contextlib
import csv
import fcntl
import io
import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

from ..errors import OutputLockedError
from tqdm import tqdm

from ..utils import atomic_write
from .config import LOG_TARGETS

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


def _scalars(record: Mapping[str, Any]) -> dict:
    """The numbers of a ``log.jsonl`` record as ``{"EVENT/KEY": value}`` (``train/loss``,
    ``epoch/val_top1``); ``event`` and ``step`` are where they go, not values."""
    event = record.get("event", "log")
    return {f"{event}/{k}": v for k, v in record.items()
            if k not in ("event", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}


class _TensorBoard:
    """``OUTPUT/tb/``: every number of every ``log.jsonl`` record as a TensorBoard scalar at the
    record's optimizer step. A resumed run starts its event file with TensorBoard's purge marker
    at the checkpoint's step + 1, so what the interrupted run logged after its checkpoint is
    dropped by the reader, as it is from ``log.jsonl``; a fresh run purges from step 0."""

    def __init__(self, out: Path, resume_step: Optional[int]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("log='tensorboard' needs the tensorboard package: pip install 'litvit[tensorboard]'"
                             ) from None
        purge = 0 if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(out / "tb"), purge_step=purge)

    def write(self, record: Mapping[str, Any]) -> None:
        for tag, value in _scalars(record).items():
            self.writer.add_scalar(tag, value, record.get("step"))

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class _WandB:
    """An offline Weights & Biases run in ``OUTPUT/wandb/`` (``wandb sync`` uploads it later) with
    the scalars of ``log.jsonl``; its id is kept in ``OUTPUT/wandb_id`` so that a resumed run
    continues the same wandb run (wandb drops steps it has already seen)."""

    def __init__(self, out: Path, resume_step: Optional[int], config: Optional[Mapping[str, Any]]):
        try:
            import wandb
        except ImportError:
            raise ValueError("log='wandb' needs the wandb package: pip install wandb") from None
        id_file = out / "wandb_id"
        run_id = id_file.read_text(encoding="utf-8").strip() if resume_step is not None and id_file.is_file() else ""
        if not run_id:
            run_id = uuid.uuid4().hex[:8]
            _write_text_atomic(id_file, run_id + "\n")
        self.run = wandb.init(project="litvit", name=out.name, id=run_id, resume="allow", mode="offline",
                              dir=str(out), config=dict(config or {}))

    def write(self, record: Mapping[str, Any]) -> None:
        self.run.log(_scalars(record), step=record.get("step"))

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class _RunLog:
    """``log.jsonl`` (append) and ``metrics.csv`` (rewritten each epoch) in the output folder; rank 0 only.

    ``loggers`` (names in :data:`~litvit.engine.config.LOG_TARGETS`) get every record written to
    ``log.jsonl`` too; used as a context manager, they are closed when the run ends, also by an error."""

    def __init__(self, out: Path, enabled: bool, resume_step: Optional[int], loggers: Sequence[str] = (),
                 config: Optional[Mapping[str, Any]] = None):
        self.jsonl = out / "log.jsonl"
        self.csv = out / "metrics.csv"
        self.enabled = enabled
        self.mirrors: list = []
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
        if enabled:
            try:
                for name in dict.fromkeys(loggers):
                    if name == "tensorboard":
                        self.mirrors.append(_TensorBoard(out, resume_step))
                    elif name == "wandb":
                        self.mirrors.append(_WandB(out, resume_step, config))
                    else:
                        raise ValueError(f"log={name!r} is not one of {LOG_TARGETS}")
            except BaseException:
                self.close(failed=True)
                raise

    def __enter__(self) -> "_RunLog":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def close(self, failed: bool = False) -> None:
        mirrors, self.mirrors = self.mirrors, []
        for mirror in mirrors:
            mirror.close(failed)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.jsonl, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            for mirror in self.mirrors:
                mirror.write(record)

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
