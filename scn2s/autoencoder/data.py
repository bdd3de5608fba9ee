"""Sparse minibatches, thinning and the input transform (torch; no AnnData)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from scipy import sparse

__all__ = ["CsrBatches", "Staging", "binomial", "input_transform", "nonzero_entries", "thin"]


class CsrBatches:
    """Rows of a CSR count matrix as dense minibatches on a device.

    The matrix stays sparse on the host; each batch's stored entries are gathered from CSR into reused host
    buffers (:class:`Staging`; pinned on CUDA, so that the copy to the device is asynchronous and overlaps the
    device's work on the batch before), moved and densified on the device. Nothing is copied per epoch beyond the
    batches themselves.

    Parameters
    ----------
    counts
        Cells x genes counts.
    device
        Where batches are densified.
    groups
        Each row's batch (sample, donor: ``batch_key``), codes ``0..n_groups-1``, or ``None``.
    n_groups
        Number of batches (default: the largest code plus one).
    """

    def __init__(
        self,
        counts: sparse.csr_matrix,
        device: torch.device,
        *,
        groups: np.ndarray | None = None,
        n_groups: int | None = None,
    ) -> None:
        counts = sparse.csr_matrix(counts)
        self.shape = counts.shape
        self.device = torch.device(device)
        self.groups = None if groups is None else np.asarray(groups, dtype=np.int64)
        if self.groups is not None and len(self.groups) != self.shape[0]:
            msg = f"groups has {len(self.groups)} entries for {self.shape[0]} rows."
            raise ValueError(msg)
        if self.groups is None:
            self.n_groups = 0
        else:
            self.n_groups = int(self.groups.max(initial=-1)) + 1 if n_groups is None else int(n_groups)
        self._indptr = torch.from_numpy(counts.indptr.astype(np.int64))
        self._indices = torch.from_numpy(counts.indices.astype(np.int64))
        self._data = torch.from_numpy(counts.data.astype(np.float32))
        self._staging = Staging(self.device)

    def __len__(self) -> int:
        return self.shape[0]

    def one_hot(self, rows: np.ndarray, *, reference: int | None = None) -> torch.Tensor | None:
        """The rows' batches, one-hot (``len(rows) x n_groups``, float32, on the device), or ``None`` without batches.

        ``reference``: every row in that batch instead of its own.
        """
        if self.groups is None:
            return None
        codes = np.full(len(rows), reference) if reference is not None else self.groups[np.asarray(rows)]
        return torch.nn.functional.one_hot(torch.from_numpy(codes).to(self.device), self.n_groups).float()

    def dense(self, rows: np.ndarray) -> torch.Tensor:
        """Dense ``len(rows) x genes`` float32 tensor of the given rows, on the device."""
        row_ids, cols, vals = self._entries(rows)
        return self._scatter(len(rows), row_ids, cols, vals)

    def thinned(
        self, rows: np.ndarray, fraction: float | torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense ``(input, target)`` of the given rows: ``input ~ Binomial(counts, fraction)``, ``target`` the rest.

        ``fraction``: one for all rows, or a tensor of one per row (on the device). Only the stored (non-zero)
        counts are thinned, so the cost follows the non-zeros, not the batch size.
        """
        row_ids, cols, vals = self._entries(rows)
        kept = binomial(vals, fraction[row_ids] if isinstance(fraction, torch.Tensor) else fraction, generator)
        n = len(rows)
        return self._scatter(n, row_ids, cols, kept), self._scatter(n, row_ids, cols, vals - kept)

    def _scatter(self, n: int, row_ids: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((n, self.shape[1]), dtype=torch.float32, device=self.device)
        out[row_ids, cols] = vals
        return out

    def _entries(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row positions, columns and values of the stored entries of ``rows``, on the device."""
        rows = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        starts = self._indptr[rows]
        lengths = self._indptr[rows + 1] - starts
        total = int(lengths.sum())
        # positions of every stored entry of the selected rows
        offsets = torch.repeat_interleave(starts - torch.cumsum(lengths, 0) + lengths, lengths)
        flat = torch.arange(total) + offsets
        cols, vals = self._staging.gather((self._indices, self._data), flat)
        row_ids = torch.repeat_interleave(torch.arange(len(rows), device=self.device), lengths.to(self.device))
        return row_ids, cols, vals

    def batches(self, batch_size: int, *, order: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Yield row indices of consecutive batches over all rows, in ``order`` (default: as stored)."""
        order = np.arange(self.shape[0]) if order is None else order
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]


class Staging:
    """Reused host buffers through which gathered entries go to the device.

    :meth:`gather` takes the entries at ``index`` of host arrays into a buffer (pinned on CUDA, grown as needed and
    reused), and copies them to the device, asynchronously on CUDA: the host gathers the next batch while the
    device still works on this one. The buffers are used in turns (``n_buffers`` sets of them); before a set is
    refilled, the copy out of it is waited for. On the CPU the same path runs with plain buffers and a copy.
    """

    def __init__(self, device: torch.device, n_buffers: int = 2) -> None:
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self._buffers: list[list[torch.Tensor]] = [[] for _ in range(n_buffers)]
        self._copied: list = [None] * n_buffers  # CUDA events: the copies out of each set are done
        self._turn = 0

    def gather(self, sources: tuple[torch.Tensor, ...], index: torch.Tensor) -> list[torch.Tensor]:
        """``[source[index] for source in sources]``, on the device."""
        turn = self._turn
        self._turn = (turn + 1) % len(self._buffers)
        if self._copied[turn] is not None:
            self._copied[turn].synchronize()
        buffers, n, out = self._buffers[turn], len(index), []
        for k, source in enumerate(sources):
            if k == len(buffers) or buffers[k].numel() < n or buffers[k].dtype != source.dtype:
                size = max(n, 2 * buffers[k].numel() if k < len(buffers) else n)
                with torch.inference_mode(False):  # a normal tensor: refilled in and out of inference mode
                    buffer = torch.empty(size, dtype=source.dtype, pin_memory=self._cuda)
                buffers[k : k + 1] = [buffer]
            staged = buffers[k][:n]
            torch.index_select(source, 0, index, out=staged)
            out.append(staged.to(self.device, non_blocking=self._cuda, copy=True))
        if self._cuda:
            self._copied[turn] = torch.cuda.Event()
            self._copied[turn].record()
        return out


SMALL_COUNT = 4
"""Counts up to this are thinned as sums of Bernoulli trials (:func:`binomial`), larger ones by ``torch.binomial``."""


def binomial(counts: torch.Tensor, probs: torch.Tensor | float, generator: torch.Generator) -> torch.Tensor:
    """``Binomial(counts, probs)`` draws of a 1-D tensor of counts (float, whole numbers), one per entry.

    A count ``n`` of at most :data:`SMALL_COUNT` is the number of its ``n`` Bernoulli trials (uniform draws below
    ``probs``) that succeed; the larger counts are drawn by ``torch.binomial``. Most molecule counts are ones and
    twos: on pbmc1k's and zheng's counts this takes about two thirds of ``torch.binomial``'s time on the CPU.
    ``probs``: one for all entries, or one per entry.
    """
    probs = torch.as_tensor(probs, dtype=counts.dtype, device=counts.device).expand_as(counts)
    uniform = torch.rand((SMALL_COUNT, len(counts)), generator=generator, device=counts.device, dtype=counts.dtype)
    trials = torch.arange(SMALL_COUNT, device=counts.device, dtype=counts.dtype)[:, None] < counts
    drawn = ((uniform < probs) & trials).sum(dim=0, dtype=counts.dtype)
    large = torch.nonzero(counts > SMALL_COUNT).squeeze(1)
    if len(large):
        drawn[large] = torch.binomial(counts[large], probs[large], generator=generator)
    return drawn


def nonzero_entries(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat positions and the values of the non-zero entries of a dense count tensor (for :func:`thin`)."""
    flat = counts.view(-1).nonzero().squeeze(1)
    return flat, counts.view(-1)[flat]


def thin(
    counts: torch.Tensor,
    fraction: float,
    generator: torch.Generator,
    *,
    entries: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binomial thinning of a dense count tensor: ``(input, target)`` with ``input ~ Binomial(counts, fraction)``.

    Only the non-zero counts are drawn (a zero stays zero), so the cost follows the non-zeros. ``entries``: those of
    :func:`nonzero_entries`, if the same counts are thinned again.
    """
    flat, values = nonzero_entries(counts) if entries is None else entries
    kept = torch.zeros_like(counts)
    kept.view(-1)[flat] = binomial(values, fraction, generator)
    return kept, counts - kept


def input_transform(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log1p`` of counts per 10,000 molecules, and the library sizes (zero rows stay zero)."""
    library = counts.sum(dim=1, keepdim=True)
    scale = torch.where(library > 0, 1e4 / library.clamp_min(1.0), torch.zeros_like(library))
    return torch.log1p(counts * scale), library
