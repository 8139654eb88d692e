"""One process or many: torchrun's environment, the process group, reductions across ranks."""
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, List, Sequence, Union

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

__all__ = ["DistInfo", "setup_distributed", "sync_buffers", "unwrap_model", "is_main_process", "print_main"]


def is_main_process() -> bool:
    """Rank 0 under torchrun (or a single process): the one that prints summaries. Readable before
    the process group exists (from the environment torchrun sets)."""
    return int(os.environ.get("RANK", 0)) == 0


def print_main(msg: str) -> None:
    """Print ``msg`` (flushed) on the main process only: one copy of each summary under torchrun."""
    if is_main_process():
        print(msg, flush=True)


@dataclass
class DistInfo:
    """Where this process stands: rank, world size, device, and reductions that are no-ops alone.

    Attributes:
        rank (int): global rank (0 alone).
        world_size (int): number of processes.
        local_rank (int): rank on this machine (picks the CUDA device).
        device (torch.device): the device this process trains on.
        initialized_here (bool): :func:`setup_distributed` created the process group (and tears it down).
    """
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def reduce_sum(self, values: Union[Tensor, Sequence[float]]) -> Union[Tensor, List[float]]:
        """Sum over ranks. A tensor comes back as a tensor, a list of numbers as a list of floats
        (in float64, so counts stay exact)."""
        as_list = not isinstance(values, Tensor)
        t = torch.as_tensor(values, dtype=torch.float64) if as_list else values
        if self.distributed:
            backend = torch_dist.get_backend()
            on = self.device if backend == "nccl" else torch.device("cpu")
            t_dev = t.to(on).clone()
            torch_dist.all_reduce(t_dev, op=torch_dist.ReduceOp.SUM)
            t = t_dev.to(t.device)
        return t.tolist() if as_list else t

    def all_gather_object(self, obj: Any) -> List[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            torch_dist.barrier()


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (``env://``), or run alone when ``WORLD_SIZE`` is unset/1.

    Backend: NCCL when training on CUDA, gloo on CPU. ``device`` is ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if use_cuda:
        dev = torch.device(device if device.startswith("cuda:") else f"cuda:{local_rank % torch.cuda.device_count()}")
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    info = DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)
    if world > 1 and not torch_dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        torch_dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                      timeout=timedelta(minutes=30))
        info.initialized_here = True
    return info


def sync_buffers(module: nn.Module, dist: DistInfo) -> None:
    """Make every rank's buffers equal: floating ones (BatchNorm running statistics) averaged over
    ranks, integer ones (``num_batches_tracked``) taken from rank 0. Called before evaluating and
    checkpointing, so that what rank 0 saves is what every rank evaluated."""
    if not dist.distributed:
        return
    for b in module.buffers():
        t = b.data if torch_dist.get_backend() == "nccl" or b.device.type == "cpu" else b.data.cpu()
        if b.is_floating_point():
            torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
            t /= dist.world_size
        else:
            torch_dist.broadcast(t, src=0)
        if t is not b.data:
            b.data.copy_(t)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


