"""Relevance: the batched LRP against the slow explicit z_ij reference, zennit and Captum; conservation and bias
share; gradient×input and integrated gradients against autograd identities and Captum; randomisation check."""

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from xaiscope.core.checkpoint import load_checkpoint
from xaiscope.core.relevance import (FIRST_RULES, RULES, RelevanceError, ensure_torchvision_importable,
                                     gradient_x_input, integrated_gradients, lrp, lrp_captum, lrp_reference,
                                     lrp_zennit, randomisation_check)
from xaiscope.core.sst_qoi import SstQoiMLP, checkpoint_inputs, demo_checkpoint
from xaiscope.data.sst import demo_sst

torch.set_num_threads(1)


def small_net(seed, n_in=9, hidden=(6, 5), bias=True):
    torch.manual_seed(seed)
    m = SstQoiMLP(n_in, hidden).double()
    if not bias:
        for lin in m.linear_layers():
            lin.bias.data.zero_()
    else:
        for lin in m.linear_layers():
            lin.bias.data.normal_(0, 0.3)
    return m


@pytest.fixture(scope="module")
def demo():
    ds = demo_sst(with_ssh=False)
    ck = load_checkpoint(demo_checkpoint(3))
    x = torch.as_tensor(checkpoint_inputs(ck.manifest, ds)[:48], dtype=torch.float64)
    return ck, x


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("first_rule", [None, *FIRST_RULES])
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_lrp_equals_explicit_reference(rule, first_rule, seed):
    m = small_net(seed)
    x = torch.randn(4, 9, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.5
    kw = dict(rule=rule, first_rule=first_rule, low=-4.0, high=np.linspace(3, 5, 9))
    fast = lrp(m, x, **kw).relevance
    ref = lrp_reference(m, x, **kw)
    np.testing.assert_allclose(fast, ref, rtol=1e-10, atol=1e-12)
    assert np.abs(ref).max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("rule", RULES)
def test_conservation_without_biases(rule):
    m = small_net(3, bias=False)
    x = torch.randn(5, 9, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    e = lrp(m, x, rule=rule, epsilon=1e-12)
    np.testing.assert_allclose(e.relevance.sum(1), e.logit, rtol=1e-8)
    np.testing.assert_allclose(e.checks["conservation"], 1.0, atol=1e-8)
    # a large ε absorbs relevance: conservation drops below 1
    assert np.all(lrp(m, x, rule=rule, epsilon=10.0).checks["conservation"] < 0.9)
    np.testing.assert_allclose(e.checks["bias_share"], 0.0, atol=1e-12)


def test_bias_share_accounts_for_the_missing_relevance():
    m = small_net(4)
    for lin in m.linear_layers():  # positive biases: every z⁺ denominator is positive, nothing goes to ε
        lin.bias.data.abs_()
    x = torch.randn(6, 9, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        logits = m(x)
    for rule in ("zplus", "alpha1beta0"):
        e = lrp(m, x, rule=rule)
        np.testing.assert_allclose(e.logit, logits.numpy()[np.arange(6), logits.argmax(1).numpy()])
        np.testing.assert_allclose(e.checks["conservation"] + e.checks["bias_share"], 1.0, atol=1e-4)
        assert e.checks["bias_share"].min() > 1e-3


def test_epsilon_lrp_is_gradient_times_input_without_biases():
    m = small_net(5, bias=False)
    x = torch.randn(5, 9, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    np.testing.assert_allclose(lrp(m, x, epsilon=1e-12).relevance, gradient_x_input(m, x).relevance,
                               rtol=1e-8, atol=1e-10)


def test_integrated_gradients_complete_and_exact_for_linear_model():
    torch.manual_seed(11)  # seeded weights and inputs: the test is the same on every machine
    lin = nn.Sequential(nn.Linear(9, 2)).double()
    x = torch.randn(4, 9, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    ig = integrated_gradients(lin, x, n_steps=3)
    t = ig.target
    ref = x.numpy() * lin[0].weight.detach().numpy()[t]
    # relative to each element, plus float64 round-off of the largest (an element near zero has no relative digits)
    np.testing.assert_allclose(ig.relevance, ref, rtol=1e-12, atol=1e-14 * np.abs(ref).max())
    m = small_net(6)
    ig = integrated_gradients(m, x, n_steps=256)
    assert np.abs(ig.checks["completeness_delta"]).max() < 1e-2 * np.abs(ig.logit).max()


def test_integrated_gradients_match_captum():
    pytest.importorskip("captum")
    from captum.attr import IntegratedGradients

    m = small_net(7)
    x = torch.randn(4, 9, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ours = integrated_gradients(m, x, target=1, n_steps=50)
    theirs = IntegratedGradients(m).attribute(x, target=1, n_steps=50, method="riemann_middle")
    np.testing.assert_allclose(ours.relevance, theirs.detach().numpy(), rtol=1e-6, atol=1e-12)  # Captum: float32 alphas


@pytest.mark.parametrize("hidden,bias,n_steps,with_baseline", [((6, 5), True, 64, False), ((6, 5), False, 7, True),
                                                             ((8,), True, 1, False), ((7, 6, 5), True, 33, True)])
def test_integrated_gradients_factored_path_equals_autograd_steps(hidden, bias, n_steps, with_baseline):
    """The factored path (first layer affine along the path, W1 applied once) is the same Riemann sum as
    differentiating the network at every step point, one autograd call per step here (float64, ≤ 1e-12 rel.)."""
    m = small_net(11, hidden=hidden, bias=bias)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 9, generator=g, dtype=torch.float64)
    base = torch.randn(9, generator=g, dtype=torch.float64) * 0.5 if with_baseline else None
    fast = integrated_gradients(m, x, baseline=base, n_steps=n_steps, path="factored")
    slow = integrated_gradients(m, x, baseline=base, n_steps=n_steps, path="autograd")
    b = torch.zeros(9, dtype=torch.float64) if base is None else base
    steps = []
    for a in (np.arange(n_steps) + 0.5) / n_steps:
        p = (b + a * (x - b)).requires_grad_(True)
        out = m(p)
        (gr,) = torch.autograd.grad(out[torch.arange(6), torch.as_tensor(fast.target)].sum(), p)
        steps.append(gr.numpy())
    ref = (x - b).numpy() * np.mean(steps, 0)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(fast.relevance, ref, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(slow.relevance, ref, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(fast.checks["completeness_delta"], slow.checks["completeness_delta"], atol=1e-12)


def test_integrated_gradients_path_choice():
    m = nn.Sequential(nn.Linear(9, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(3, 9, dtype=torch.float64)
    auto = integrated_gradients(m, x, n_steps=16)  # not Linear/ReLU: differentiated at every step
    np.testing.assert_allclose(auto.relevance, integrated_gradients(m, x, n_steps=16, path="autograd").relevance)
    with pytest.raises(RelevanceError, match="unsupported layer"):
        integrated_gradients(m, x, path="factored")
    with pytest.raises(RelevanceError, match="path"):
        integrated_gradients(m, x, path="fast")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("first_rule", [None, "zbox"])
def test_agreement_with_zennit_on_demo_checkpoint(demo, rule, first_rule):
    ensure_torchvision_importable()
    pytest.importorskip("zennit")
    ck, x = demo
    kw = dict(rule=rule, first_rule=first_rule, low=x.min(0).values, high=x.max(0).values)
    ours = lrp(ck.model, x, **kw).relevance
    theirs = lrp_zennit(ck.model, x, **kw)
    scale = np.abs(ours).max()
    assert np.abs(ours - theirs).max() <= 1e-9 * scale


def test_agreement_with_captum_epsilon_on_demo_checkpoint(demo):
    pytest.importorskip("captum")
    ck, x = demo
    for eps in (1e-6, 1e-2):
        ours = lrp(ck.model, x, rule="epsilon", epsilon=eps).relevance
        theirs = lrp_captum(ck.model, x, epsilon=eps)
        assert np.abs(ours - theirs).max() <= 1e-9 * np.abs(ours).max()
    # a second call works too (Captum removes its rules after every attribute())
    np.testing.assert_allclose(lrp_captum(ck.model, x[:3]), lrp(ck.model, x[:3]).relevance, rtol=1e-7, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_relevance_on_cuda_equals_the_cpu(demo):
    """A model on the GPU: LRP (every rule, zbox bounds as tensors), gradient × input, zennit and Captum compute
    there (the inputs follow the model) and give the CPU's relevance, as NumPy."""
    import copy

    ensure_torchvision_importable()
    ck, x = demo
    gpu = copy.deepcopy(ck.model).cuda()
    kw = dict(low=x.min(0).values, high=x.max(0).values)
    for rule in RULES:
        for first_rule in (None, "zbox"):
            cpu = lrp(ck.model, x, rule=rule, first_rule=first_rule, **kw)
            got = lrp(gpu, x, rule=rule, first_rule=first_rule, **kw)
            np.testing.assert_allclose(got.relevance, cpu.relevance, rtol=1e-9, atol=1e-12 * np.abs(cpu.relevance).max())
            np.testing.assert_array_equal(got.target, cpu.target)
            np.testing.assert_allclose(got.checks["conservation"], cpu.checks["conservation"], rtol=1e-9)
    t = np.arange(len(x)) % 2  # explicit targets, given on the CPU
    np.testing.assert_allclose(lrp(gpu, x.cuda(), target=t).relevance, lrp(ck.model, x, target=t).relevance,
                               rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(gradient_x_input(gpu, x).relevance, gradient_x_input(ck.model, x).relevance,
                               rtol=1e-9, atol=1e-15)
    ours = lrp(ck.model, x).relevance
    if importlib.util.find_spec("zennit") is not None:
        assert np.abs(lrp_zennit(gpu, x) - ours).max() <= 1e-9 * np.abs(ours).max()
    if importlib.util.find_spec("captum") is not None:
        assert np.abs(lrp_captum(gpu, x) - ours).max() <= 1e-9 * np.abs(ours).max()


def test_randomisation_check_destroys_the_maps(demo):
    ck, x = demo
    rows = randomisation_check(ck.model, x[:16], seed=0)
    assert [r["n_randomised"] for r in rows] == [1, 2, 3]
    assert [r["layer"] for r in rows] == [2, 1, 0]
    assert rows[-1]["spearman"] < 0.3
    # an explanation that ignores the weights (the input itself) passes none of it: correlation stays 1
    same = randomisation_check(ck.model, x[:4], explain_fn=lambda m, xx: xx.numpy(), seed=0)
    assert min(r["spearman"] for r in same) > 0.999


def test_errors():
    m = small_net(0)
    x = torch.zeros(2, 9, dtype=torch.float64)
    with pytest.raises(RelevanceError, match="rule"):
        lrp(m, x, rule="gamma")
    with pytest.raises(RelevanceError, match="low= and high="):
        lrp(m, x, first_rule="zbox")
    with pytest.raises(RelevanceError, match="target"):
        lrp(m, x, target=5)
    with pytest.raises(RelevanceError, match="alternating"):
        lrp(nn.Sequential(nn.Linear(9, 3), nn.Tanh(), nn.Linear(3, 2)), x)
    with pytest.raises(RelevanceError, match="shape"):
        lrp(m, torch.zeros(9))
