"""DANN pieces: DomainDiscriminator, DomainAdversarialLoss, and a compiled DANN step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import dapkernels as dk


def test_discriminator_heads_and_shapes():
    x = torch.randn(10, 12)
    sig = dk.DomainDiscriminator(12, 16)
    p = sig(x)
    assert p.shape == (10, 1) and ((p > 0) & (p < 1)).all()
    assert torch.allclose(torch.sigmoid(sig.logits(x)), p)
    two = dk.DomainDiscriminator(12, 16, batch_norm=False, head="2-logit")
    assert two(x).shape == (10, 2)
    assert any(isinstance(m, nn.Dropout) for m in two.modules())
    assert sum(isinstance(m, nn.BatchNorm1d) for m in sig.modules()) == 2
    with pytest.raises(ValueError, match="head"):
        dk.DomainDiscriminator(12, 16, head="softmax")


def _manual_bce(p_s, p_t, w_s=None, w_t=None):
    l_s = F.binary_cross_entropy(p_s, torch.ones_like(p_s), reduction="none")
    l_t = F.binary_cross_entropy(p_t, torch.zeros_like(p_t), reduction="none")
    if w_s is not None:
        l_s, l_t = l_s * w_s, l_t * w_t
    return 0.5 * (l_s.mean() + l_t.mean())


def test_loss_value_weights_accuracy_and_reversed_grad():
    torch.manual_seed(0)
    disc = dk.DomainDiscriminator(5, 8).eval()
    loss_fn = dk.DomainAdversarialLoss(disc, grl=dk.GradientReversal(0.7))
    f_s = torch.randn(6, 5, requires_grad=True)
    f_t = torch.randn(4, 5) + 1.0
    w_s, w_t = torch.rand(6), torch.rand(4)
    loss = loss_fn(f_s, f_t, w_s, w_t)
    p = disc(torch.cat([f_s, f_t])).reshape(-1)
    expected = _manual_bce(p[:6], p[6:], w_s, w_t)
    assert torch.allclose(loss, expected, rtol=1e-6)
    acc_s = (p[:6] > 0.5).float().mean()
    acc_t = (p[6:] <= 0.5).float().mean()
    assert torch.allclose(loss_fn.domain_accuracy, 0.5 * (acc_s + acc_t))
    assert not loss_fn.domain_accuracy.requires_grad
    (g,) = torch.autograd.grad(loss, f_s)
    (g_plain,) = torch.autograd.grad(expected, f_s)
    assert torch.allclose(g, -0.7 * g_plain, rtol=1e-5, atol=1e-7)


def test_loss_two_logit_and_plain_probability_discriminator():
    torch.manual_seed(1)
    f_s, f_t = torch.randn(5, 3), torch.randn(7, 3)
    two = dk.DomainDiscriminator(3, 4, head="2-logit").eval()
    out = two(torch.cat([f_s, f_t]))
    labels = torch.tensor([1] * 5 + [0] * 7)
    ce = F.cross_entropy(out, labels, reduction="none")
    loss = dk.DomainAdversarialLoss(two, grl=dk.GradientReversal())(f_s, f_t)
    assert torch.allclose(loss, 0.5 * (ce[:5].mean() + ce[5:].mean()), rtol=1e-6)
    probs = nn.Sequential(nn.Linear(3, 1), nn.Sigmoid())  # no .logits: BCE on probabilities
    p = probs(torch.cat([f_s, f_t])).reshape(-1)
    loss = dk.DomainAdversarialLoss(probs, grl=dk.GradientReversal())(f_s, f_t)
    assert torch.allclose(loss, _manual_bce(p[:5], p[5:]), rtol=1e-6)


def test_default_grl_is_warm_start_and_bad_weights():
    loss_fn = dk.DomainAdversarialLoss(dk.DomainDiscriminator(3, 4))
    assert isinstance(loss_fn.grl, dk.WarmStartGradientReversal) and loss_fn.grl.auto_step
    loss_fn(torch.randn(4, 3), torch.randn(4, 3))
    assert int(loss_fn.grl.num_iters) == 1
    with pytest.raises(ValueError, match="w_s"):
        loss_fn(torch.randn(4, 3), torch.randn(4, 3), w_s=torch.ones(3))


def test_compiled_dann_step_matches_eager_without_graph_break():
    torch.manual_seed(0)
    features = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16))
    disc = dk.DomainDiscriminator(16, 24)
    adv = dk.DomainAdversarialLoss(disc, grl=dk.WarmStartGradientReversal(max_iters=10))
    adv.grl.step()
    coral, mmd = dk.CORALLoss(), dk.MMDLoss()
    x_s, x_t = torch.randn(12, 20), torch.randn(10, 20) + 0.5

    def step(feat, loss_fn, xs, xt):
        f_s, f_t = feat(xs), feat(xt)
        return loss_fn(f_s, f_t) + coral(f_s, f_t) + 0.5 * mmd(f_s, f_t)

    feat_c, adv_c = copy.deepcopy(features), copy.deepcopy(adv)
    explanation = torch._dynamo.explain(step)(feat_c, adv_c, x_s, x_t)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1

    torch._dynamo.reset()
    feat_c, adv_c = copy.deepcopy(features), copy.deepcopy(adv)
    compiled = torch.compile(step, fullgraph=True)
    params_c = list(feat_c.parameters()) + list(adv_c.parameters())
    params_e = list(features.parameters()) + list(adv.parameters())
    for _ in range(2):  # second call: BatchNorm statistics and the counter have moved
        loss_c = compiled(feat_c, adv_c, x_s, x_t)
        grads_c = torch.autograd.grad(loss_c, params_c)
        loss_e = step(features, adv, x_s, x_t)
        grads_e = torch.autograd.grad(loss_e, params_e)
        assert torch.allclose(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        for a, b in zip(grads_c, grads_e):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
        assert torch.allclose(adv_c.domain_accuracy, adv.domain_accuracy)
        adv.grl.step()
        adv_c.grl.step()
