"""Token data sets of discrete diffusion (issue 16, item 6): MNIST quantised from synthetic idx files, the
digits' levels, and the Markov-chain sequences whose exact likelihood, entropy and exact denoiser are
checked against brute-force enumeration; with that denoiser the discrete ELBO, computed exactly by
enumerating every x_t, equals the exact NLL for one position and bounds it on average for several."""
import itertools
import math

import numpy as np
import pytest
import torch

import sde_gen.discrete as dd
from sde_gen.discrete.data import quantize_levels


def _write_idx(path, array):
    """An uncompressed idx file: magic 0 0 0x08 ndim, big-endian dims, uint8 data (LeCun et al.)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 256, (3, 28, 28))
    train[0, 0, :4] = [0, 127, 128, 255]  # the binarisation threshold, both sides, and the ends
    _write_idx(tmp_path / "train-images-idx3-ubyte", train)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(6) % 10)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", test)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(3))
    return tmp_path, train, test


@pytest.mark.parametrize("levels", [2, 16, 256])
def test_mnist_tokens_quantise_the_idx_pixels(mnist_dir, levels):
    path, train, test = mnist_dir
    data = dd.MNISTTokens(str(path), levels=levels)
    by_hand = lambda a: torch.as_tensor((a.astype(np.int64) * levels) // 256)[:, None]  # noqa: E731
    assert torch.equal(data.train, by_hand(train)) and torch.equal(data.test, by_hand(test))
    assert data.event_shape == (1, 28, 28) and data.num_levels == levels and data.num_classes == 10
    if levels == 2:
        assert data.train[0, 0, 0, :4].tolist() == [0, 0, 1, 1]
    x = data.sample_batch(5, torch.Generator().manual_seed(0))
    assert x.dtype == torch.long and x.shape == (5, 1, 28, 28) and int(x.max()) < levels


def test_mnist_tokens_downsample_and_subset(mnist_dir):
    path, train, _ = mnist_dir
    data = dd.MNISTTokens(str(path), levels=4, downsample=2, max_train=4)
    block = train[:4].reshape(4, 14, 2, 14, 2).mean((2, 4))  # block means, by hand
    assert torch.equal(data.train[:, 0], torch.as_tensor((np.floor(block).astype(np.int64) * 4) // 256))
    assert data.event_shape == (1, 14, 14) and data.train.shape[0] == 4
    with pytest.raises(ValueError, match="downsample must divide the image size 28; got 3"):
        dd.MNISTTokens(str(path), downsample=3)
    with pytest.raises(ValueError, match=r"levels must be an integer in \[2, 256\]; got 300"):
        dd.MNISTTokens(str(path), levels=300)
    with pytest.raises(FileNotFoundError, match="missing file"):
        dd.MNISTTokens(str(path / "nowhere"))


def test_digits_tokens_are_the_raw_levels_or_requantised():
    from sde_gen.data import Digits

    base, raw, four = Digits(), dd.DigitsTokens(), dd.DigitsTokens(levels=4)
    assert torch.equal(raw.train, base.train_pixels.long()) and raw.num_levels == 17
    assert torch.equal(four.test, base.test_pixels.long() * 4 // 17) and int(four.train.max()) == 3
    with pytest.raises(ValueError, match="levels must be <= 17"):
        dd.DigitsTokens(levels=18)
    assert torch.equal(quantize_levels(torch.arange(17), 17, 17), torch.arange(17))


def test_token_dataset_refuses_ids_outside_its_levels():
    good = torch.zeros(4, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"train_tokens must hold ids in \[0, 3\); got values in \[0, 3\]"):
        dd.TokenDataset(good + torch.tensor([0, 0, 3]), good, 3)
    with pytest.raises(ValueError, match="integer tensor"):
        dd.TokenDataset(good.float(), good, 3)


def _all_sequences(K, L):
    return torch.tensor(list(itertools.product(range(K), repeat=L)), dtype=torch.long)


def test_markov_log_prob_and_entropy_against_enumeration():
    data = dd.MarkovTokens(num_levels=3, length=4, num_train=10, num_test=10, seed=1)
    xs = _all_sequences(3, 4)
    logp = data.log_prob(xs)
    assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-12)
    assert data.entropy() == pytest.approx(float(-(logp.exp() * logp).sum()), abs=1e-12)
    # the closed-form marginals of x^l against the enumerated law
    onehot = torch.nn.functional.one_hot(xs, 3).double()
    assert torch.allclose(torch.einsum("n,nlk->lk", logp.exp(), onehot), data.position_marginals(), atol=1e-12)
    # probabilities by hand for one sequence
    x = torch.tensor([[2, 0, 0, 1]])
    by_hand = data.log_initial[2] + data.log_transition[2, 0] + data.log_transition[0, 0] + data.log_transition[0, 1]
    assert float(data.log_prob(x)) == pytest.approx(float(by_hand), abs=1e-14)


@pytest.mark.statistical
def test_markov_samples_follow_the_chain(stat_seed):
    data = dd.MarkovTokens(num_levels=3, length=5, num_train=20000, num_test=10, seed=stat_seed(5))
    emp = torch.nn.functional.one_hot(data.train, 3).double().mean(0)
    # each frequency within 5 binomial standard errors of the exact marginal
    exact = data.position_marginals()
    assert ((emp - exact).abs() <= 5 * (exact * (1 - exact) / 20000).sqrt() + 1e-12).all()


@pytest.mark.parametrize("name", list(dd.PROCESSES))
def test_markov_denoiser_is_bayes_rule_by_enumeration(name):
    K, L, T = 3, 4, 5
    data = dd.MarkovTokens(num_levels=K, length=L, num_train=10, num_test=10, sharpness=1.5, seed=2)
    process = dd.build_process(name, K, num_timesteps=T)
    xs = _all_sequences(K, L)  # every x_0
    prior = data.log_prob(xs).exp()
    g = torch.Generator().manual_seed(0)
    for t in (1, 3, T):
        x_t = process.q_sample(data.sample(6, g), torch.full((6,), t), g)
        out = data.denoiser(process)(x_t, torch.full((6,), t)).exp()
        Qbar = process.cumulative_matrix(torch.tensor([t]))[0]  # (S, S)
        for b in range(6):
            lik = Qbar[xs, x_t[b]].prod(1)  # q(x_t | x_0) for every x_0
            post = prior * lik / (prior * lik).sum()
            brute = torch.einsum("n,nlk->lk", post, torch.nn.functional.one_hot(xs, K).double())
            assert torch.allclose(out[b], brute, atol=1e-12), (name, t, b)


def _exact_nelbo(process, model, x0):
    """-ELBO of each x_0 (N, L) with every expectation over x_t done by enumerating all S^L states."""
    S, L = process.num_states, x0.shape[1]
    states = _all_sequences(S, L)
    total = dd.prior_kl(process, x0)
    for t in range(1, process.T + 1):
        tt = torch.full((states.shape[0],), t)
        logits = model(states, tt)
        Qbar = process.cumulative_matrix(torch.tensor([t]))[0]
        for i in range(x0.shape[0]):
            w = Qbar[x0[i], states].prod(1)  # q(x_t | x_0) of every state
            keep = w > 0
            kl = dd.vb_term(process, logits[keep], x0[i].expand(int(keep.sum()), L), states[keep], tt[keep])
            total[i] += (w[keep] * kl).sum()
    return total


def test_exact_denoiser_elbo_is_the_nll_for_one_position():
    """With one position the averaged posterior is the exact reverse kernel and (absorbing, MI schedule)
    the prior is exact, so the ELBO has no gap: -ELBO(x_0) = -log p(x_0) for every x_0."""
    data = dd.MarkovTokens(num_levels=4, length=1, num_train=10, num_test=10, seed=3)
    process = dd.AbsorbingProcess(4, num_timesteps=6)
    x0 = torch.arange(4)[:, None]
    assert torch.allclose(_exact_nelbo(process, data.denoiser(process), x0), -data.log_prob(x0), atol=1e-10)


@pytest.mark.parametrize("name", ["absorbing", "uniform"])
def test_exact_denoiser_elbo_bounds_the_entropy_for_correlated_positions(name):
    """Several correlated positions: the factorised reverse kernel is not the exact one, so the expected
    -ELBO lies above the entropy; the gap shrinks as T grows (fewer positions change per step)."""
    data = dd.MarkovTokens(num_levels=2, length=3, num_train=10, num_test=10, sharpness=2.0, seed=4)
    xs = _all_sequences(2, 3)
    p = data.log_prob(xs).exp()
    gaps = []
    for T in (2, 16):
        process = dd.build_process(name, 2, num_timesteps=T)
        nelbo = _exact_nelbo(process, data.denoiser(process), xs)
        gaps.append(float((p * nelbo).sum()) - data.entropy())
    assert gaps[0] > gaps[1] > -1e-10, gaps
    if name == "absorbing":
        assert gaps[1] < 0.25 * gaps[0], gaps
