"""Running under ``torchrun``: one process per device, DistributedDataParallel, nothing else.

gcnshrink does not launch processes. ``torchrun --nproc-per-node N -m gcnshrink prune ...`` starts
N copies of the same command; each reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the
environment that torchrun sets, joins the process group (gloo on CPU, nccl on GPUs) the first time
training starts, and trains its share of every global batch. Without those variables (a plain
``gcnshrink prune``) every function here answers for a single process and nothing is initialised.

What the training loop relies on (``gcnshrink.train``):

- every rank builds the same model from the same seed, draws the same global batch order and the
  same dropout seed, and so computes the same method decisions (thresholds, TCP's accessibility,
  schedules) from identical weights: DDP keeps the weights identical by averaging gradients;
- each rank takes an interleaved share of each global batch; its task loss is scaled by its share
  of the batch so that DDP's average over ranks is the mean over the global batch;
- metrics are summed over ranks; after every epoch the buffers (batch-norm statistics, which each
  rank updates from its own share) are made rank 0's, validation runs on every rank on the whole
  split, and the selection uses rank 0's accuracies, so every rank keeps the same epoch;
- a resumable state holds every rank's random streams (dropout), so ``--resume`` with the same
  number of processes continues exactly (with another number, as a run of that many processes);
- only rank 0 writes files and prints (``is_main``);
- a failure on one rank ends the run: that rank prints its message and exits; the others, waiting
  in a collective, get an error from the backend (turned into :class:`PeerFailure`, one line) or
  are stopped by torchrun (SIGTERM, which unwinds like Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch import nn

from gcnshrink.errors import GcnshrinkError, PeerFailure


def world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise GcnshrinkError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        raise GcnshrinkError(f"RANK={os.environ['RANK']!r} is not a number") from None


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group (once) and pick this rank's device; returns the device to train on."""
    if not is_distributed():
        return device
    if not dist.is_available():
        raise GcnshrinkError("this PyTorch build has no torch.distributed; run one process")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def all_sum(value: float) -> float:
    """``value`` summed over all ranks (itself without torchrun)."""
    if not (is_distributed() and dist.is_initialized()):
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return float(tensor.item())


def barrier() -> None:
    if is_distributed() and dist.is_initialized():
        dist.barrier()


def _active() -> bool:
    return is_distributed() and dist.is_initialized()


def from_main(value):
    """Rank 0's ``value`` (any picklable object) on every rank; itself without torchrun. A decision
    taken from it (a validation accuracy, a sweep's plan) is then the same on all ranks."""
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (batch-norm statistics, masks) on every rank."""
    if not _active():
        return
    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def all_gather(obj) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` without torchrun)."""
    if not _active():
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


# what the backends say when the process at the other end of a collective is gone
_LOST_PEER = (
    "Connection closed by peer",
    "Connection reset by peer",
    "remote worker",
    "NCCL communicator was aborted",
)


@contextlib.contextmanager
def peer_failures():
    """Inside a distributed run, the error a collective raises because another rank has stopped
    becomes :class:`PeerFailure` (one line; that rank printed its own message). Anything else
    passes through unchanged."""
    try:
        yield
    except (dist.DistError, RuntimeError) as exc:
        lost = isinstance(exc, dist.DistError) or any(s in str(exc) for s in _LOST_PEER)
        if not (is_distributed() and lost):
            raise
        raise PeerFailure(
            "another process of this torchrun run stopped (its message is above), so this one "
            "stops too"
        ) from None
