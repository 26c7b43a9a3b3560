"""One DDP step with global-batch losses equals one process on the concatenated batch.

W = 2 gloo ranks, float64, different rows on each rank (uneven target counts).  The model has
no BatchNorm: DDP normalises with per-rank batch statistics (SyncBatchNorm would be needed for
BN layers to see the global batch), which would break the equality for reasons unrelated to
the losses.  The classification loss is a per-rank mean over equal source counts, so DDP's
averaging makes it the global mean; the transfer losses follow the package's convention
(rows receive ``W · ∂L/∂z_local``), so DDP's averaging makes them the global gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import dapkernels as dk

from .distributed_utils import run_ranks

COUNTS_S, COUNTS_T = [4, 4], [5, 3]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 6)).double()


def _step(model, head, xs, ys, xt, transfer, group):
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.5, momentum=0.0)
    f = model(torch.cat((xs, xt)))
    f_s, f_t = f[: xs.shape[0]], f[xs.shape[0]:]
    loss = F.cross_entropy(head(f_s), ys) + transfer(f_s, f_t, group)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss)


TRANSFERS = {
    "dan": lambda s, t, g: dk.mmd(s, t, process_group=g),
    "dan-biased": lambda s, t, g: dk.mmd(s, t, estimator="biased", backend="reference",
                                         process_group=g),
    "coral": lambda s, t, g: 10.0 * dk.coral(s, t, process_group=g),
    "jan": lambda s, t, g: dk.jmmd([s, s.softmax(1)], [t, t.softmax(1)], process_group=g),
}


def _ddp_worker(rank: int, world: int) -> None:
    g = torch.Generator().manual_seed(7)
    xs = torch.randn(sum(COUNTS_S), 3, generator=g, dtype=torch.float64)
    ys = torch.randint(0, 3, (sum(COUNTS_S),), generator=g)
    xt = torch.randn(sum(COUNTS_T), 3, generator=g, dtype=torch.float64) + 0.7
    a, b = sum(COUNTS_S[:rank]), sum(COUNTS_T[:rank])
    sl_s, sl_t = slice(a, a + COUNTS_S[rank]), slice(b, b + COUNTS_T[rank])
    for name, transfer in TRANSFERS.items():
        model, head = _model(), nn.Linear(6, 3).double()
        ref_model, ref_head = _model(), nn.Linear(6, 3).double()
        ref_head.load_state_dict(head.state_dict())
        ref_loss = _step(ref_model, ref_head, xs, ys, xt, transfer, None)
        ddp_model, ddp_head = DDP(model), DDP(head)
        loss = _step(ddp_model, ddp_head, xs[sl_s], ys[sl_s], xt[sl_t], transfer,
                     dist.group.WORLD)
        for p, q in zip([*model.parameters(), *head.parameters()],
                        [*ref_model.parameters(), *ref_head.parameters()]):
            err = float((p - q).abs().max()) / max(float(q.abs().max()), 1e-12)
            assert err <= 1e-6, f"{name}: parameters differ by {err:.3g} (relative)"
        assert loss == loss and ref_loss == ref_loss
    # control: per-rank (local) MMD under DDP is a different estimator; the test would see it
    model, head = _model(), nn.Linear(6, 3).double()
    ref_model, ref_head = _model(), nn.Linear(6, 3).double()
    ref_head.load_state_dict(head.state_dict())
    _step(ref_model, ref_head, xs, ys, xt, TRANSFERS["dan"], None)
    _step(DDP(model), DDP(head), xs[sl_s], ys[sl_s], xt[sl_t], TRANSFERS["dan"], None)
    err = max(float((p - q).abs().max()) for p, q in
              zip(model.parameters(), ref_model.parameters()))
    assert err > 1e-4, "the local loss should not reproduce the global step"


def test_ddp_step_equals_one_process_on_concatenated_batch():
    run_ranks(_ddp_worker, 2)
