"""Every rank raises, none hangs: a collective agreement on local validation results.

A rank whose inputs fail validation must not simply raise: its peers would block forever in
the next collective.  Instead each rank validates locally, then all ranks exchange one small
fixed-size int64 status vector (one ``all_gather``; it also carries the row counts the
variable-size gather needs, so the check costs no extra collective).  If any rank reports a
failure, every rank fetches the messages (``all_gather_object``, on the error path only) and
raises the same :class:`DistributedInputError` naming the offending ranks.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
import torch.distributed as dist

__all__ = ["DistributedInputError", "agree", "comm_device", "signature"]


class DistributedInputError(ValueError):
    """Raised on every rank when the inputs of at least one rank are invalid or the ranks
    disagree (feature width, dtype, estimator, kernels).  ``ranks`` lists the offending
    ranks."""

    def __init__(self, message: str, ranks: Sequence[int]) -> None:
        super().__init__(message)
        self.ranks = list(ranks)


def comm_device(group, device: torch.device) -> torch.device:
    """Where collective buffers live: a CUDA device for NCCL (the features' own when they are
    on one), the CPU otherwise."""
    if dist.get_backend(group) != "nccl":
        return torch.device("cpu")
    if device.type == "cuda":
        return device
    return torch.device("cuda", torch.cuda.current_device())


def signature(*parts: object) -> int:
    """A stable 31-bit hash of ``repr(parts)`` (what every rank must agree on)."""
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


def agree(
    group,
    error: BaseException | None,
    fields: Sequence[int],
    sig: int,
    device: torch.device,
    describe: str = "",
) -> torch.Tensor:
    """Exchanges the local status and returns the (W, 2 + len(fields)) int64 table of all ranks.

    Row r is ``[status_r, signature_r, *fields_r]`` (``status`` 1 when rank r's local
    validation failed).  Raises :class:`DistributedInputError` on **every** rank when some
    rank failed or when the signatures differ (the message names the ranks; ``describe`` is
    this rank's human-readable configuration, gathered only on that error path).

    Args:
        group: the process group.
        error: this rank's validation error, or ``None``.
        fields: small integers every rank contributes (e.g. its row counts); zeros are fine
            when ``error`` is set.
        sig: :func:`signature` of what must match across ranks.
        device: device of the features (the buffer goes to :func:`comm_device`).
        describe: this rank's configuration in words, for the mismatch message.
    """
    world = dist.get_world_size(group)
    row = torch.tensor([1 if error is not None else 0, sig, *fields], dtype=torch.int64)
    row = row.to(comm_device(group, device))
    rows = [torch.empty_like(row) for _ in range(world)]
    dist.all_gather(rows, row, group=group)
    table = torch.stack(rows).cpu()
    failed = [r for r in range(world) if int(table[r, 0]) != 0]
    mismatch = [r for r in range(world) if int(table[r, 1]) != int(table[0, 1])]
    if failed or mismatch:
        text = (f"{type(error).__name__}: {error}" if error is not None else None, describe)
        texts: list = [None] * world
        dist.all_gather_object(texts, text, group=group)
        if failed:
            lines = [f"rank {r}: {texts[r][0]}" for r in failed]
            raise DistributedInputError(
                f"invalid input on rank(s) {failed} of {world}; every rank raises:\n"
                + "\n".join(lines), failed) from error
        lines = [f"rank {r}: {texts[r][1]}" for r in range(world)]
        raise DistributedInputError(
            f"ranks disagree with rank 0 (rank(s) {mismatch}); every rank raises:\n"
            + "\n".join(lines), mismatch)
    return table
