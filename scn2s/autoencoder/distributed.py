"""Training across processes with ``torch.distributed`` under ``torchrun`` (torch; no AnnData).

scn2s launches no process. Run your script, or the ``scn2s`` command line, under ``torchrun
--nproc_per_node=N`` and call :func:`init_from_env` before any work (the command line does). While a process group
of more than one process is initialised, :func:`scn2s.autoencoder.train.train` trains with
:class:`~torch.nn.parallel.DistributedDataParallel`:

* every rank holds all the counts and draws the same permutation of the cells each epoch (the same seed on every
  rank, one draw per epoch: ``DistributedSampler.set_epoch`` semantics); each minibatch of ``batch_size`` cells
  of that permutation is shared out, rank ``r`` taking its cells ``r, r + N, r + 2N, ...``, so the ranks see
  disjoint parts of the epoch and together exactly the batches of a single process;
* each rank thins its own cells with a stream of its own; the gradient of a step is that of the mean loss over the
  whole batch's cells (each rank's sum is weighted by the batch's cell count, DDP averages over the ranks);
* the held-out molecules are the same on every rank, since they come from the same seeds: :func:`check_same` raises
  if the training or held-out molecules or the seed differ between ranks. The held-out loss is summed over the
  ranks' cells (:func:`gather`, added in rank order), so early stopping, and the choice of candidate, epochs and
  inference mode, are the same on every rank;
* at the end the network of rank 0 is broadcast (:func:`broadcast_module`): every rank returns the same weights.

Every rank computes the output; only the main process (:func:`is_main_process`) should write files. Join the
process group once per process (:func:`init_from_env`, then :func:`destroy` at the end).
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import torch
import torch.distributed as dist
from scipy import sparse
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "broadcast_module",
    "check_same",
    "destroy",
    "fingerprint",
    "gather",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "launched_by_torchrun",
    "rank",
    "rank_seed",
    "shard",
    "world_size",
    "wrap",
]

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """Whether torchrun's environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...) are set."""
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


def init_from_env(device: str | torch.device | None = None, *, backend: str | None = None) -> torch.device:
    """Join the process group described by torchrun's environment variables; return this rank's device.

    Parameters
    ----------
    device
        Torch device of the training. ``None``: CUDA when available, else CPU. On CUDA without an index, the GPU
        ``LOCAL_RANK`` (one GPU per process); it is made the current device.
    backend
        ``None``: ``"nccl"`` on CUDA, ``"gloo"`` on CPU.

    Returns
    -------
    The device this rank should train on: pass it as ``device=`` to :func:`scn2s.pp.denoise`.

    Raises
    ------
    RuntimeError
        If the environment variables of torchrun are missing (the process was not started by torchrun).
    """
    if not launched_by_torchrun():
        missing = [name for name in _TORCHRUN_VARIABLES if name not in os.environ]
        msg = (
            f"init_from_env needs the environment of torchrun, but {', '.join(missing)} are not set; start the "
            "script with `torchrun --nproc_per_node=N script.py`."
        )
        raise RuntimeError(msg)
    local_rank = int(os.environ["LOCAL_RANK"])
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if backend is None:
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
    return device


def destroy() -> None:
    """Leave the process group (if one is initialised), once every rank is done with it."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether a process group of more than one process is initialised (training is then shared)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes training together (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Whether this process is rank 0, the one that writes files and prints (True without a process group)."""
    return rank() == 0


def rank_seed(seed: int) -> int:
    """Seed of this rank's own random streams (thinning, dropout): ``seed`` itself on rank 0."""
    r = rank()
    if r == 0:
        return seed
    return int(np.random.SeedSequence([seed, r]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def shard(rows: np.ndarray) -> np.ndarray:
    """The part of ``rows`` for this rank: positions ``rank, rank + N, ...`` (all of them without a process group)."""
    return rows[rank() :: world_size()]


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather(values) -> np.ndarray:
    """Every rank's ``values`` (float64), as ``(world_size, len(values))`` in rank order, the same on every rank.

    Sums over ranks taken from it (``gather(x).sum(axis=0)``) are added in the same order on every rank, so they
    are identical to the bit. Without a process group: ``values`` as one row.
    """
    values = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if not is_distributed():
        return values[None, :]
    local = torch.as_tensor(values, device=_collective_device())
    out = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return torch.stack(out).cpu().numpy()


def fingerprint(matrix: sparse.spmatrix | np.ndarray) -> int:
    """CRC-32 of a matrix's shape, structure and values (equal matrices in the same format give equal numbers)."""
    if sparse.issparse(matrix):
        matrix = sparse.csr_matrix(matrix)
        parts = (np.asarray(matrix.shape, dtype=np.int64), matrix.indptr, matrix.indices, matrix.data)
    else:
        parts = (np.asarray(np.shape(matrix), dtype=np.int64), np.asarray(matrix))
    crc = 0
    for part in parts:
        crc = zlib.crc32(np.ascontiguousarray(part).tobytes(), crc)
    return crc


def check_same(what: str, values) -> None:
    """Raise :class:`RuntimeError` if ``values`` (numbers) differ between ranks; nothing without a process group."""
    if not is_distributed():
        return
    everyone = gather(values)
    if not (everyone == everyone[0]).all():
        msg = (
            f"The {what} differ between the {world_size()} ranks; every rank must denoise the same counts with the "
            "same arguments and the same integer seed (rng=0, not None)."
        )
        raise RuntimeError(msg)


def wrap(module: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel` (gradients averaged over the ranks)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(module, device_ids=[index])
    return DistributedDataParallel(module)


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite the parameters and buffers of ``module`` on every rank with those of rank ``src``, in place."""
    if not is_distributed():
        return
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src)
