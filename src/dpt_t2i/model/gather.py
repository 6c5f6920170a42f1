"""The global batch across processes, for the matching loss's global negatives.

With N processes of B samples each, `gather_batch` gives every process the (N*B, ...) global
batch in rank order (process r's rows at r*B .. r*B+B-1), so each process computes the loss of
the whole global batch, as one process with batch N*B would. The gradient flows to the local
rows only (the other rows are constants here; their own process differentiates them), and it
is multiplied by N: DDP averages gradients over the N processes, and the average of the N
local parts, each N times its share, is the gradient of the global loss. Parameters that the
loss reads directly (the temperature) get the full gradient on every process, which the
average leaves as it is. This is open_clip's `gather_features` with `local_loss=False` and
`gather_with_grad=False`, with the factor N that makes the sum exact.

Every process must call with the same B (the training loop draws the same batch everywhere).
Without torch.distributed, or with one process, every function here is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def process_group() -> tuple[int, int]:
    """(rank, world size) of torch.distributed; (0, 1) when it is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(x: Tensor) -> Tensor:
    parts = [torch.empty_like(x) for _ in range(process_group()[1])]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _GatherToLocal(torch.autograd.Function):
    """All-gather forward; backward keeps the local rows' gradient, times the world size."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.rank, ctx.world = process_group()
        ctx.rows = x.shape[0]
        return _all_gather(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        start = ctx.rank * ctx.rows
        return grad[start:start + ctx.rows] * ctx.world


def gather_batch(x: Tensor) -> Tensor:
    """Every process's `x` concatenated along dim 0 in rank order.

    Args:
        x: (B, ...) this process's rows; B the same on every process.

    Returns:
        (N*B, ...); the gradient reaches `x` only through its own rows, times N (see the
        module docstring). `x` itself when there is one process.
    """
    if process_group()[1] == 1:
        return x
    if not x.requires_grad:
        return _all_gather(x)
    return _GatherToLocal.apply(x)


def previous_rows(x: Tensor, count: int) -> Tensor:
    """The `count` rows of the global batch just before this process's first row, wrapping.

    With one process these are `x[B-count:]`, so `rolled_rows(x, previous_rows(x, R), R)`
    is `torch.roll`'s, and with N processes it is the roll of the global batch. Only the rows
    needed travel (the last min(count, B) rows of each process).

    Args:
        x: (B, ...) this process's rows.
        count: how many, 0 <= count < N*B.

    Returns:
        (count, ...) global rows offset-count .. offset-1 (mod N*B), offset = rank*B, detached:
        rows of other processes carry no gradient here.
    """
    rank, world = process_group()
    rows, total = x.shape[0], x.shape[0] * world
    if not 0 <= count < total:
        raise ValueError(f"count must be in [0, {total}) for a global batch of {total}, "
                         f"got {count}")
    keep = min(count, rows)
    tails = x[rows - keep:].detach()
    if world > 1:
        tails = _all_gather(tails)  # (world*keep, ...): process p's last `keep` rows
    wanted = (rank * rows - count + torch.arange(count)) % total  # global row numbers
    return tails[(wanted // rows) * keep + wanted % rows - (rows - keep)]


def rolled_rows(local: Tensor, previous: Tensor, count: int) -> Tensor:
    """Row b of the result holds rows b-1 .. b-count of the (global) batch.

    Args:
        local: (B, ...) this process's rows.
        previous: (count, ...) the rows before them (`previous_rows`, or a function of them).
        count: R.

    Returns:
        (B, R, ...): entry (b, r-1) is `torch.roll(batch, r, 0)[b]` of the global batch.
    """
    if previous.shape[0] != count or previous.shape[1:] != local.shape[1:]:
        raise ValueError(f"previous must be ({count}, {', '.join(map(str, local.shape[1:]))}), "
                         f"got {tuple(previous.shape)}")
    rows = local.shape[0]
    if count == 0:
        return local.new_empty((rows, 0, *local.shape[1:]))
    ext = torch.cat([previous, local])  # (R + B, ...)
    return torch.stack([ext[count - r:count - r + rows] for r in range(1, count + 1)], 1)
