"""The DDPM++ U-Net (sde_gen.nets.DDPMpp): shapes for every resampling / embedding option, time and
class conditioning, the skip rescaling at initialisation, attention-resolution validation, the
parameter count of the CIFAR-10 reference size against a count from the layer formulas, training
steps that lower a held-out loss, and channels-last == contiguous."""
import math

import numpy as np
import pytest
import torch

from sde_gen.losses import DenoisingScoreMatching
from sde_gen.nets import DDPMpp, ScoreModel
from sde_gen.nets.ddpmpp import Attention, ResBlock, positional_embedding
from sde_gen.sdes import VPSDE

TINY = dict(in_channels=3, image_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(4,), dropout=0.0)


def _randomise(net, seed=0, std=0.2):
    """Non-zero weights everywhere (the zero-initialised output layers would hide every dependence)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return net


def _inputs(b=4, c=3, n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, n, n, generator=g), torch.rand(b, generator=g) * 0.9 + 0.05


@pytest.mark.parametrize("resample", ["resblock", "conv", "pool"])
@pytest.mark.parametrize("embedding", ["positional", "fourier"])
def test_shapes_and_zero_output_at_initialisation(resample, embedding):
    net = DDPMpp(**TINY, resample=resample, embedding=embedding, num_heads=2)
    x, t = _inputs()
    out = net(x, t)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, torch.zeros_like(out))  # the output convolution starts at zero
    out = _randomise(net)(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().max() > 0
    # three levels and a batch of one
    deep = DDPMpp(**dict(TINY, channel_mult=(1, 2, 1), attention_resolutions=(8, 2)), resample=resample)
    assert deep(x[:1], t[:1]).shape == (1, 3, 8, 8)


def test_time_and_class_conditioning_change_the_output():
    net = _randomise(DDPMpp(**TINY, num_classes=3)).eval()
    x, t = _inputs()
    base = net(x, t, torch.tensor([0, 1, 2, 0]))
    assert (net(x, t + 0.1, torch.tensor([0, 1, 2, 0])) - base).abs().flatten(1).amax(1).min() > 1e-3
    other = net(x, t, torch.tensor([1, 2, 0, 1]))
    assert (other - base).abs().flatten(1).amax(1).min() > 1e-3
    # an unconditional call is the "no label" token (index num_classes)
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((4,), 3)))
    # the batch elements are independent: element 0 does not depend on element 1's time
    t2 = t.clone()
    t2[1] = 0.7
    torch.testing.assert_close(net(x, t2, torch.tensor([0, 1, 2, 0]))[0], base[0])


def test_positional_embedding_matches_its_formula():
    t = torch.tensor([0.0, 1.0, 37.5, 999.0], dtype=torch.float64)
    got = positional_embedding(t, 6).numpy()
    w = np.array([10000.0 ** (-k / 2) for k in range(3)])  # dim/2 - 1 = 2
    want = np.concatenate([np.sin(t.numpy()[:, None] * w), np.cos(t.numpy()[:, None] * w)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_blocks_start_as_the_rescaled_identity():
    # zero-initialised last convolutions: ResBlock(x) = x / sqrt(2), Attention(x) = x / sqrt(2)
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 32)
    torch.testing.assert_close(ResBlock(8, 8, 32, 0.0)(x, emb), x / math.sqrt(2))
    torch.testing.assert_close(Attention(8, num_heads=2)(x), x / math.sqrt(2))
    torch.testing.assert_close(ResBlock(8, 8, 32, 0.0, skip_rescale=False)(x, emb), x)
    # a resampling block halves / doubles H and W and projects its skip (1x1 convolution)
    assert ResBlock(8, 8, 32, 0.0, "down")(x, emb).shape == (2, 8, 2, 2)
    up = ResBlock(8, 8, 32, 0.0, "up")
    assert up(x, emb).shape == (2, 8, 8, 8) and up.skip is not None


@pytest.mark.parametrize("overrides, match", [
    (dict(attention_resolutions=(16,)), r"attention_resolutions must be a subset of the U-Net's resolutions \[8, 4\] "
                                         r"\(image_size 8, 2 levels\); got \[16\]"),
    (dict(resample="fir"), r"resample must be one of \['resblock', 'conv', 'pool'\]; got 'fir'"),
    (dict(embedding="learned"), r"embedding must be one of \['positional', 'fourier'\]"),
    (dict(image_size=6, channel_mult=(1, 2, 2)), r"image_size must be divisible by 2\^\(len\(channel_mult\) - 1\) = 4; got 6"),
    (dict(num_heads=3), r"num_heads must divide every level's width \[8, 16\]; got 3"),
    (dict(channels=7), r"channels must be even"),
    (dict(dropout=1.0), r"dropout must lie in \[0, 1\)"),
])
def test_bad_options_are_one_clear_error_each(overrides, match):
    with pytest.raises(ValueError, match=match):
        DDPMpp(**dict(TINY, **overrides))


# ---------------------------------------------------------------- parameter count from the formulas
def _conv(cin, cout, k):
    return cin * cout * k * k + cout


def _norm(c):
    return 2 * c


def _block(cin, cout, emb, resamples=False):
    skip = _conv(cin, cout, 1) if (cin != cout or resamples) else 0
    return _norm(cin) + _conv(cin, cout, 3) + (emb * cout + cout) + _norm(cout) + _conv(cout, cout, 3) + skip


def _attention(c):
    return _norm(c) + _conv(c, 3 * c, 1) + _conv(c, c, 1)


def count_ddpmpp(in_ch, size, ch, mult, blocks, attn, resample="resblock", num_classes=None):
    """The parameter count of the DDPM++ U-Net from its layer formulas (Song et al. 2021, App. H)."""
    emb = 4 * ch
    n = (ch * emb + emb) + (emb * emb + emb)  # time MLP on `ch` features
    n += 0 if num_classes is None else (num_classes + 1) * emb
    n += _conv(in_ch, ch, 3)

    def resampler(c):
        return {"resblock": _block(c, c, emb, True), "conv": _conv(c, c, 3), "pool": 0}[resample]

    res, c, skips = size, ch, [ch]
    for i, m in enumerate(mult):
        for _ in range(blocks):
            n += _block(c, ch * m, emb) + (_attention(ch * m) if res in attn else 0)
            c = ch * m
            skips.append(c)
        if i < len(mult) - 1:
            n += resampler(c)
            skips.append(c)
            res //= 2
    n += 2 * _block(c, c, emb) + _attention(c)
    for i in reversed(range(len(mult))):
        for _ in range(blocks + 1):
            n += _block(c + skips.pop(), ch * mult[i], emb)
            c = ch * mult[i]
        n += _attention(c) if res in attn else 0
        if i > 0:
            n += resampler(c)
            res *= 2
    return n + _norm(c) + _conv(c, in_ch, 3)


def _numel(net):
    return sum(p.numel() for p in net.parameters())


def test_reference_cifar10_size_has_the_parameter_count_of_its_formulas():
    with torch.device("meta"):  # the 62M-parameter network without allocating or initialising it
        net = DDPMpp(in_channels=3, image_size=32)  # the defaults are the CIFAR-10 reference size
    expected = count_ddpmpp(3, 32, 128, (1, 2, 2, 2), 4, {16})
    assert _numel(net) == expected
    assert 55e6 < expected < 70e6  # the DDPM++ class (score_sde's CIFAR-10 models: about 60M)


@pytest.mark.parametrize("resample", ["resblock", "conv", "pool"])
def test_small_sizes_have_the_parameter_count_of_their_formulas(resample):
    for opts in (dict(in_ch=1, size=28, ch=16, mult=(1, 2, 2), blocks=2, attn={14}),
                 dict(in_ch=3, size=16, ch=8, mult=(1, 1, 2), blocks=1, attn={16, 4}, num_classes=10)):
        net = DDPMpp(in_channels=opts["in_ch"], image_size=opts["size"], channels=opts["ch"], channel_mult=opts["mult"],
                     num_res_blocks=opts["blocks"], attention_resolutions=sorted(opts["attn"]), resample=resample,
                     num_classes=opts.get("num_classes"))
        assert _numel(net) == count_ddpmpp(resample=resample, **opts)


# ---------------------------------------------------------------- training and memory layout
def test_a_few_training_steps_lower_a_held_out_loss():
    torch.manual_seed(0)
    sde = VPSDE()
    model = ScoreModel(DDPMpp(**dict(TINY, in_channels=1)), sde)
    g = torch.Generator().manual_seed(3)
    # data: a few fixed 8x8 patterns, so there is structure to learn
    patterns = torch.randn(4, 1, 8, 8, generator=g).clamp(-1, 1)
    loss_fn = DenoisingScoreMatching()
    held_out = patterns[torch.arange(32) % 4]
    draws = loss_fn.draw(sde, held_out, torch.Generator().manual_seed(11))

    def held_out_loss():
        with torch.no_grad():
            return float(loss_fn(model, sde, held_out, None, **draws))

    before = held_out_loss()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(10):
        x0 = patterns[torch.randint(0, 4, (16,), generator=g)]
        loss = loss_fn(model, sde, x0, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    print(f"held-out DSM loss {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before, (before, after)


def test_channels_last_gives_the_output_of_the_contiguous_network():
    plain = _randomise(DDPMpp(**TINY, num_classes=2)).eval()
    fast = DDPMpp(**TINY, num_classes=2, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    w = fast.conv_in.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    x, t = _inputs()
    y = torch.tensor([0, 1, 2, 1])
    out = fast(x, t, y)
    assert out.is_contiguous()  # callers get the standard layout
    torch.testing.assert_close(out, plain(x, t, y), rtol=1e-5, atol=1e-5)
    # and the same gradients
    for net in (plain, fast):
        net.zero_grad()
        net(x, t, y).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
