"""Discrete diffusion (sde_gen.discrete) against independent computations: matrix products built here
from the betas, Bayes' rule over enumerated trajectories, brute-force ELBOs on the joint state space
of a tiny problem, and the exact law of the categorical oracle."""
import itertools
import math

import pytest
import torch

import sde_gen.discrete as dd

PROCESS_NAMES = list(dd.PROCESSES)


def _within_floor(floor):
    """The largest TV an exact sampler plausibly scores: the floor's mean plus 5 spreads, the spread estimated
    from few replicates and therefore taken at least a quarter of the mean (TV of n draws has a CV near 0.3)."""
    return floor["mean"] + 5 * max(floor["std"], 0.25 * floor["mean"])


def _process(name, K=3, T=6, **kw):
    return dd.build_process(name, K, num_timesteps=T, **kw)


def _step_matrix_by_hand(process, t):
    """Q_t from beta_t with the formulas of D3PM written out entry by entry (no library matrix code)."""
    beta = float(process.betas[t - 1])
    K, S = process.num_classes, process.num_states
    Q = torch.zeros(S, S, dtype=torch.float64)
    if process.name == "gaussian":
        Z = sum(math.exp(-4 * n * n / ((K - 1) ** 2 * beta)) for n in range(-(K - 1), K))
        for i in range(K):
            for j in range(K):
                if i != j:
                    Q[i, j] = math.exp(-4 * (i - j) ** 2 / ((K - 1) ** 2 * beta)) / Z
            Q[i, i] = 1 - Q[i].sum()
        return Q
    for i in range(S):
        for j in range(S):
            if process.name == "uniform":
                Q[i, j] = (1 - beta) * (i == j) + beta / K
            else:  # absorbing: mass beta moves to the mask K
                Q[i, j] = (1 - beta) * (i == j) + beta * (j == K)
    return Q


def _product(process, s, t):
    out = torch.eye(process.num_states, dtype=torch.float64)
    for u in range(s + 1, t + 1):
        out = out @ _step_matrix_by_hand(process, u)
    return out


# ---------------------------------------------------------------- forward processes
@pytest.mark.parametrize("name", PROCESS_NAMES)
@pytest.mark.parametrize("schedule", [None, "cosine", "linear", "mutual_information"])
def test_qbar_and_skip_matrices_equal_products_of_one_step_matrices(name, schedule):
    p = _process(name, K=4, T=7, schedule=schedule)
    t_all = torch.arange(1, p.T + 1)
    for t in range(1, p.T + 1):
        assert torch.allclose(p.step_matrix(t_all)[t - 1], _step_matrix_by_hand(p, t), atol=1e-14)
    Qbar = p.cumulative_matrix(torch.arange(0, p.T + 1))
    for t in range(0, p.T + 1):
        assert torch.allclose(Qbar[t], _product(p, 0, t), atol=1e-13), t
    for s, t in itertools.combinations(range(p.T + 1), 2):
        assert torch.allclose(p.transition_matrix(s, t), _product(p, s, t), atol=1e-13), (s, t)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_every_transition_is_stochastic_at_the_ends_of_a_long_chain(name):
    p = _process(name, K=17, T=1000)
    ends = torch.tensor([1, 2, 500, 999, 1000])
    for M in (p.step_matrix(ends), p.cumulative_matrix(torch.tensor([0, 1, 500, 1000])),
              torch.stack([p.transition_matrix(0, 1000), p.transition_matrix(999, 1000), p.transition_matrix(0, 1)])):
        assert (M >= 0).all()
        assert torch.allclose(M.sum(-1), torch.ones(M.shape[:-1], dtype=torch.float64), atol=1e-12)
    # every process forgets x_0 by t = T: Qbar_T rows equal the prior
    QT = p.cumulative_matrix(torch.tensor([p.T]))[0]
    assert torch.allclose(QT[: p.num_classes], p.stationary().expand(p.num_classes, -1), atol=2e-3)


def test_discretised_gaussian_is_symmetric_and_favours_near_levels():
    p = _process("gaussian", K=9, T=10)
    Q = p.step_matrix(torch.arange(1, 11))
    assert torch.allclose(Q, Q.transpose(1, 2))
    off = Q[:, 4, 5:]  # from the middle level outwards
    assert (off[:, :-1] >= off[:, 1:]).all() and (off[:, 0] > off[:, -1]).all()


def test_schedules_match_their_closed_forms():
    T = 50
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + 0.008) / 1.008 * math.pi / 2)
    abar = torch.cumprod(1 - dd.beta_schedule("cosine", T), 0)
    assert torch.allclose(abar[:-1], (f / f[0])[1:-1], atol=1e-12)  # the last beta is clipped to 0.999
    mi = torch.cumprod(1 - dd.beta_schedule("mutual_information", T), 0)
    assert torch.allclose(mi, 1 - t[1:] / T, atol=1e-12)
    lin = dd.beta_schedule("linear", T, beta_start=0.1, beta_end=0.5)
    assert lin[0] == 0.1 and abs(float(lin[-1]) - 0.5) < 1e-15


def test_absorbing_reaches_all_mask_at_T_and_never_leaves_the_mask(generator=None):
    g = torch.Generator().manual_seed(0)
    p = dd.AbsorbingProcess(5, num_timesteps=40)
    x0 = torch.randint(0, 5, (64, 10), generator=g)
    xT = p.q_sample(x0, torch.full((64,), 40), g)
    assert (xT == p.mask_index).all()
    assert (p.prior_sample((3, 4), g) == p.mask_index).all()
    Q = p.step_matrix(torch.arange(1, 41))
    assert (Q[:, p.mask_index, p.mask_index] == 1).all()
    # q(x_t | x_0): keep with abar_t = 1 - t / T, else the mask
    q = p.q_probs(x0[:2], torch.tensor([10, 30]))
    assert torch.allclose(q[0, 0, x0[0, 0]], torch.tensor(0.75, dtype=torch.float64))
    assert torch.allclose(q[1, 0, 5], torch.tensor(0.75, dtype=torch.float64))


def _posterior_by_enumeration(p, s, t, x0, x_t):
    """q(x_s | x_t, x_0) by summing the probabilities of all trajectories x_1..x_t (Bayes)."""
    S = p.num_states
    Qs = [_step_matrix_by_hand(p, u) for u in range(1, t + 1)]
    joint = torch.zeros(S, dtype=torch.float64)
    for path in itertools.product(range(S), repeat=t):
        if path[-1] != x_t:
            continue
        prob, prev = 1.0, x0
        for u, x in enumerate(path):
            prob *= float(Qs[u][prev, x])
            prev = x
        joint[path[s - 1] if s > 0 else x0] += prob
    return joint / joint.sum()


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_posterior_equals_bayes_over_enumerated_trajectories(name):
    p = _process(name, K=3, T=5)
    K, S = p.num_classes, p.num_states
    gen = torch.Generator().manual_seed(1)
    for s, t in [(0, 1), (2, 3), (4, 5), (0, 5), (1, 4)]:
        Qbar = p.cumulative_matrix(torch.tensor([s, t]))
        for x0 in range(K):
            for x_t in range(S):
                if Qbar[1, x0, x_t] == 0:
                    continue  # x_t unreachable from x_0
                want = _posterior_by_enumeration(p, s, t, x0, x_t)
                onehot = torch.nn.functional.one_hot(torch.tensor([[x0]]), K).double()
                got = dd.posterior_probs(torch.tensor([[x_t]]), onehot, p.transition_matrix(s, t), Qbar[0], Qbar[1])
                assert torch.allclose(got[0, 0], want, atol=1e-12), (s, t, x0, x_t)
                if s == t - 1:
                    got_t = p.posterior_probs(torch.tensor([[x_t]]), onehot, torch.tensor([t]))
                    assert torch.allclose(got_t[0, 0], want, atol=1e-12)
        # a soft p(x_0 | x_t): the average of the posteriors over the x_0 that reach x_t
        for x_t in range(S):
            w = torch.rand(K, generator=gen, dtype=torch.float64)
            reach = Qbar[1, :K, x_t] > 0
            if not reach.any():
                continue
            w_eff = w * reach / (w * reach).sum()
            want = sum(w_eff[k] * _posterior_by_enumeration(p, s, t, k, x_t) for k in range(K) if reach[k])
            got = dd.posterior_probs(torch.tensor([[x_t]]), (w / w.sum())[None, None], p.transition_matrix(s, t),
                                     Qbar[0], Qbar[1])
            assert torch.allclose(got[0, 0], want, atol=1e-12), (s, t, x_t)


# ---------------------------------------------------------------- oracle
@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_oracle_noised_law_and_denoiser_equal_brute_force_bayes(name):
    o = dd.make_categorical_preset("tiny")
    p = _process(name, K=3, T=6)
    states0 = o.enumerate()  # (9, 2)
    p0 = o.log_prob(states0).exp()
    assert torch.allclose(p0.sum(), torch.tensor(1.0, dtype=torch.float64))
    S = p.num_states
    states_t = torch.cartesian_prod(torch.arange(S), torch.arange(S))
    for t in [0, 1, 3, 6]:
        Qbar = _product(p, 0, t)
        # joint[x0, x_t] = p(x0) prod_l Qbar[x0^l, x_t^l]
        joint = p0[:, None] * Qbar[states0[:, 0]][:, states_t[:, 0]] * Qbar[states0[:, 1]][:, states_t[:, 1]]
        qt = joint.sum(0)
        assert torch.allclose(o.noised(p, t).log_prob(states_t).exp(), qt, atol=1e-12)
        ok = qt > 0
        post = joint[:, ok] / qt[ok]  # (9, n_ok) p(x0 | x_t)
        marg = torch.stack([torch.stack([post[states0[:, l] == k].sum(0) for k in range(3)], -1) for l in range(2)], 1)
        got = o.x0_log_probs(states_t[ok], torch.full((int(ok.sum()),), t), p).exp()
        assert torch.allclose(got, marg, atol=1e-12), t


@pytest.mark.statistical
def test_oracle_sampling_matches_its_law(stat_seed):
    g = torch.Generator().manual_seed(stat_seed(3))
    o = dd.make_categorical_preset("tiny")
    floor = dd.exact_noise_floor(dd.total_variation, o, 10000, replicates=6, generator=g)
    assert floor["mean"] < 0.02
    x = o.sample(10000, g)
    assert float(dd.total_variation(x, o)) < _within_floor(floor)
    for name in dd.CATEGORICAL_PRESETS:
        big = dd.make_categorical_preset(name)
        assert float(dd.marginal_tv(big.sample(10000, g), big)) < 0.03


def test_pairwise_tv_equals_the_full_tv_on_two_positions_and_sees_lost_correlations():
    g = torch.Generator().manual_seed(5)
    o = dd.make_categorical_preset("tiny")
    x = o.sample(3000, g)
    assert torch.allclose(dd.pairwise_tv(x, o), dd.total_variation(x, o), atol=1e-12)  # L = 2: one pair
    big = dd.make_categorical_preset("seq16")
    exact = big.sample(4000, g)
    # positions drawn independently from the exact marginals: marginals right, pairs wrong
    shuffled = torch.stack([col[torch.randperm(4000, generator=g)] for col in exact.T], 1)
    assert float(dd.marginal_tv(shuffled, big)) == pytest.approx(float(dd.marginal_tv(exact, big)), abs=1e-12)
    assert float(dd.pairwise_tv(shuffled, big)) > 2 * float(dd.pairwise_tv(exact, big))
    assert float(dd.mode_weight_tv(exact, big)) < 0.05


# ---------------------------------------------------------------- ELBO on a tiny state space
def _table_model(K, S, L, T, seed):
    """A fixed, non-exact model: logits looked up in a random table indexed by (t, x_t^l, l)."""
    table = torch.randn(T + 1, S, L, K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mix = torch.randn(L, L, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)

    def model(x_t, t):
        B = x_t.shape[0]
        own = table[t[:, None], x_t, torch.arange(L).expand(B, L)]  # (B, L, K)
        other = torch.einsum("lm,bmk->blk", mix, own)  # couple positions so p(x0 | x_t) is not position-wise
        return own + 0.5 * other.tanh()

    return model


def _brute_force_model_reverse(p, model, t, states_t, states_prev):
    """P[x_t, x_{t-1}] on the joint states, from Bayes with hand-built matrices, positions multiplied."""
    K = p.num_classes
    Qbar_prev, Qt, Qbar_t = _product(p, 0, t - 1), _step_matrix_by_hand(p, t), _product(p, 0, t)
    n = states_t.shape[0]
    x0p = torch.softmax(model(states_t, torch.full((n,), t)), -1)  # (n, L, K)
    P = torch.ones(n, states_prev.shape[0], dtype=torch.float64)
    for l in range(states_t.shape[1]):
        for a in range(n):
            xt = int(states_t[a, l])
            reach = torch.tensor([float(Qbar_t[k, xt] > 0) for k in range(K)], dtype=torch.float64)
            if reach.sum() == 0:  # x_t unreachable at step t: the row carries no mass
                P[a] = 0.0
                continue
            w = x0p[a, l] * reach
            w = w / w.sum()
            post = sum(w[k] * Qbar_prev[k] * Qt[:, xt] / Qbar_t[k, xt] for k in range(K) if reach[k])
            P[a] *= post[states_prev[:, l]]
    return P


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_elbo_terms_equal_brute_force_and_bound_the_model_likelihood(name):
    K, L, T = 3, 2, 4
    p = _process(name, K=K, T=T)
    S = p.num_states
    states = torch.cartesian_prod(*[torch.arange(S)] * L)  # all joint states of x_t
    data = torch.cartesian_prod(*[torch.arange(K)] * L)  # all x_0
    model = _table_model(K, S, L, T, seed=5)
    # the model's exact marginal p_theta(x_0) = prior @ P_T @ ... @ P_1
    prior = p.stationary()[states].prod(1)
    reverse = {t: _brute_force_model_reverse(p, model, t, states, states) for t in range(1, T + 1)}
    marg = prior
    for t in range(T, 0, -1):
        marg = marg @ reverse[t]
    data_idx = (data[:, 0] * S + data[:, 1])
    assert torch.allclose(marg[data_idx].sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12)
    for x0 in data:
        x0b = x0[None]
        # q(x_t | x_0) on the joint states; q(x_{t-1} | x_t, x_0) by Bayes on the joint states
        qt = {}
        for t in range(0, T + 1):
            Qbar = _product(p, 0, t)
            qt[t] = Qbar[x0[0], states[:, 0]] * Qbar[x0[1], states[:, 1]]
        nelbo_bf = float((qt[T] * (qt[T] / prior).log()).nansum())
        for t in range(1, T + 1):
            Qjoint = _step_matrix_by_hand(p, t)[states[:, None, 0], states[None, :, 0]] * \
                _step_matrix_by_hand(p, t)[states[:, None, 1], states[None, :, 1]]  # [prev, next]
            term_bf = 0.0
            for a in range(states.shape[0]):
                if qt[t][a] == 0:
                    continue
                q_prev = qt[t - 1] * Qjoint[:, a]
                q_prev = q_prev / q_prev.sum()
                kl = float(torch.where(q_prev > 0, q_prev * (q_prev / reverse[t][a]).log(), torch.zeros(())).sum())
                term_bf += float(qt[t][a]) * kl
            # the library's term, averaged exactly over x_t ~ q(x_t | x_0)
            ok = qt[t] > 0
            xs = states[ok]
            lib = dd.vb_term(p, model(xs, torch.full((xs.shape[0],), t)), x0b.expand(xs.shape[0], L), xs,
                             torch.full((xs.shape[0],), t))
            assert abs(float((qt[t][ok] * lib).sum()) - term_bf) < 1e-10, (tuple(x0.tolist()), t)
            nelbo_bf += term_bf
        assert abs(float(dd.prior_kl(p, x0b)[0]) - float((qt[T] * (qt[T] / prior).log()).nansum())) < 1e-12
        logp = math.log(float(marg[x0[0] * S + x0[1]]))
        assert -nelbo_bf <= logp + 1e-12, (tuple(x0.tolist()), -nelbo_bf, logp)


def test_elbo_is_tight_for_a_point_mass_under_the_absorbing_process():
    # data = one sequence; the exact denoiser makes every KL zero and the chain ends all-mask
    probs = torch.zeros(1, 4, 3, dtype=torch.float64)
    probs[0, torch.arange(4), torch.tensor([2, 0, 1, 2])] = 1.0
    o = dd.CategoricalMixture([1.0], probs)
    p = dd.AbsorbingProcess(3, num_timesteps=12)
    x0 = o.sample(5, torch.Generator().manual_seed(0))
    res = dd.nelbo(p, o.denoiser(p), x0, torch.Generator().manual_seed(1))
    assert res.nfe == 12
    assert torch.equal(res.nats, torch.zeros(5, dtype=torch.float64))
    assert float(o.log_prob(x0[:1])) == 0.0


def _expected_nelbo_by_enumeration(p, o):
    """E_{x_0 ~ data} of the exact -ELBO of the exact denoiser: every x_t of every step enumerated."""
    S, L = p.num_states, o.num_positions
    states = torch.cartesian_prod(*[torch.arange(S)] * L)
    den, total = o.denoiser(p), 0.0
    for x0, w0 in zip(o.enumerate(), o.log_prob(o.enumerate()).exp()):
        nelbo = float(dd.prior_kl(p, x0[None]))
        for t in range(1, p.T + 1):
            Qbar = _product(p, 0, t)
            q = Qbar[x0[0], states[:, 0]] * Qbar[x0[1], states[:, 1]]
            ok = q > 0
            tt = torch.full((int(ok.sum()),), t)
            nelbo += float((q[ok] * dd.vb_term(p, den(states[ok], tt), x0.expand(len(tt), L), states[ok], tt)).sum())
        total += float(w0) * nelbo
    return total


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_exact_denoiser_elbo_is_above_the_entropy_and_closes_as_T_grows(name):
    o = dd.make_categorical_preset("tiny")
    p0 = o.log_prob(o.enumerate()).exp()
    H = float(-(p0 * p0.log()).sum())
    gaps = [_expected_nelbo_by_enumeration(_process(name, K=3, T=T), o) - H for T in (4, 16)]
    assert gaps[0] > gaps[1] > 0  # a bound that tightens (the per-position reverse gets exact as T grows)
    assert gaps[1] < 0.3 * gaps[0]


@pytest.mark.statistical
def test_nelbo_estimate_is_above_the_entropy_and_reports_bits(stat_seed):
    g = torch.Generator().manual_seed(stat_seed(4))
    o = dd.make_categorical_preset("tiny")
    p = dd.UniformProcess(3, num_timesteps=20)
    x0 = o.sample(4000, g)
    res = dd.nelbo(p, o.denoiser(p), x0, g)
    H = float(-o.log_prob(o.enumerate()).exp().mul(o.log_prob(o.enumerate())).sum())
    mean, se = float(res.nats.mean()), float(res.nats.std()) / math.sqrt(4000)
    assert mean > H - 4 * se  # the exact model's bound cannot beat the data entropy
    assert torch.allclose(res.bits_per_dim, res.nats / (2 * math.log(2)))
    assert torch.allclose(res.nats, res.prior + res.diffusion + res.reconstruction)


def test_hybrid_loss_is_vb_plus_lambda_times_cross_entropy_and_trains():
    K, L, T = 4, 5, 10
    p = dd.UniformProcess(K, num_timesteps=T)
    logits = torch.zeros(T + 1, K, L, K, requires_grad=True)

    def model(x_t, t):
        return logits[t[:, None], x_t, torch.arange(L)]

    x0 = torch.randint(0, K, (32, L), generator=torch.Generator().manual_seed(0))
    l0 = dd.hybrid_loss(p, model, x0, torch.Generator().manual_seed(7), lambda_ce=0.0)
    l1 = dd.hybrid_loss(p, model, x0, torch.Generator().manual_seed(7), lambda_ce=0.5)
    g = torch.Generator().manual_seed(7)  # the same draws, by hand
    t = torch.randint(1, T + 1, (32,), generator=g)
    x_t = p.q_sample(x0, t, g)
    ce = torch.nn.functional.cross_entropy(model(x_t, t).reshape(-1, K), x0.reshape(-1))
    assert torch.allclose(l1 - l0, 0.5 * ce, atol=1e-6)
    l1.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


# ---------------------------------------------------------------- samplers
def test_step_grid_and_nfe_accounting():
    assert dd.samplers.step_grid(10, 3) == [10, 7, 3, 0]
    assert dd.samplers.step_grid(5, 5) == [5, 4, 3, 2, 1, 0]
    o = dd.make_categorical_preset("tiny")
    p = dd.UniformProcess(3, num_timesteps=20)
    seen = []
    res = dd.sample_discrete(p, o.denoiser(p), (7, 2), nfe=4, generator=torch.Generator().manual_seed(0),
                             callback=lambda i, t, x: seen.append((i, t, x.shape)))
    assert res.nfe == res.num_steps == 4 and res.samples.shape == (7, 2) and res.samples.dtype == torch.long
    assert [(i, t) for i, t, _ in seen] == [(0, 15), (1, 10), (2, 5), (3, 0)]
    pa = dd.AbsorbingProcess(3, num_timesteps=20)
    res = dd.sample_discrete(pa, o.denoiser(pa), (7, 2), sampler="maskgit", nfe=2,
                             generator=torch.Generator().manual_seed(0))
    assert res.nfe == 2 and (res.samples < 3).all()


def test_samplers_are_reproducible_with_a_generator():
    o = dd.make_categorical_preset("seq16")
    p = dd.AbsorbingProcess(8, num_timesteps=50)
    for sampler in dd.DISCRETE_SAMPLERS:
        a = dd.sample_discrete(p, o.denoiser(p), (20, 16), sampler=sampler, nfe=8, generator=torch.Generator().manual_seed(3))
        b = dd.sample_discrete(p, o.denoiser(p), (20, 16), sampler=sampler, nfe=8, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a.samples, b.samples)


@pytest.mark.statistical
@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_ancestral_with_the_exact_denoiser_on_a_product_law_is_exact_on_any_sub_grid(name, stat_seed):
    # one component: p(x_0 | x_t) factorises over positions, so every sub-grid step is exact
    g = torch.Generator().manual_seed(stat_seed(10))
    probs = torch.tensor([[[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]], dtype=torch.float64)
    o = dd.CategoricalMixture([1.0], probs)
    p = _process(name, K=3, T=40)
    n = 12000
    floor = dd.exact_noise_floor(dd.total_variation, o, n, replicates=8, generator=g)
    for nfe in (1, 3, 40):
        res = dd.sample_discrete(p, o.denoiser(p), (n, 2), nfe=nfe, generator=g)
        assert float(dd.total_variation(res.samples, o)) < _within_floor(floor), nfe


@pytest.mark.statistical
@pytest.mark.parametrize("name", ["uniform", "absorbing"])
def test_ancestral_with_the_exact_denoiser_reproduces_a_correlated_law(name, stat_seed):
    g = torch.Generator().manual_seed(stat_seed(11))
    o = dd.make_categorical_preset("tiny")
    p = _process(name, K=3, T=48)
    n = 10000
    floor = dd.exact_noise_floor(dd.total_variation, o, n, replicates=8, generator=g)
    fine = float(dd.total_variation(dd.sample_discrete(p, o.denoiser(p), (n, 2), nfe=48, generator=g).samples, o))
    coarse = float(dd.total_variation(dd.sample_discrete(p, o.denoiser(p), (n, 2), nfe=1, generator=g).samples, o))
    # every step of the fine grid moves few positions, so the per-position reverse is (almost) the joint one
    assert fine < _within_floor(floor)
    # one step samples the positions independently: the correlation is lost, far above the floor
    assert coarse > 10 * floor["mean"]


@pytest.mark.statistical
def test_maskgit_random_order_one_token_per_step_is_exact_and_error_falls_with_steps(stat_seed):
    g = torch.Generator().manual_seed(stat_seed(12))
    o = dd.make_categorical_preset("small4")  # L = 4, K = 4: 256 states
    p = dd.AbsorbingProcess(4, num_timesteps=100)
    n = 20000
    floor = dd.exact_noise_floor(dd.total_variation, o, n, replicates=8, generator=g)
    tv = {}
    for nfe in (1, 2, 4):
        res = dd.sample_discrete(p, o.denoiser(p), (n, 4), sampler="maskgit", nfe=nfe, choice_temperature=1e6, generator=g)
        assert res.nfe == nfe and not (res.samples == p.mask_index).any()
        tv[nfe] = float(dd.total_variation(res.samples, o))
    assert tv[4] < _within_floor(floor)  # a random-order chain rule: exact
    assert tv[1] > tv[2] > tv[4]
    greedy = dd.sample_discrete(p, o.denoiser(p), (n, 4), sampler="maskgit", nfe=4, generator=g)
    assert float(dd.total_variation(greedy.samples, o)) > tv[4]  # confidence order is biased (mode-seeking)


# ---------------------------------------------------------------- bad input
def test_bad_input_raises_one_clear_error_each():
    p = dd.UniformProcess(3, num_timesteps=5)
    pa = dd.AbsorbingProcess(3, num_timesteps=5)
    o = dd.make_categorical_preset("tiny")
    with pytest.raises(ValueError, match=r"x0 must hold token ids in \[0, 3\)"):
        dd.prior_kl(p, torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match=r"x0 must hold token ids in \[0, 3\)"):
        dd.prior_kl(p, torch.tensor([[-1, 0]]))
    with pytest.raises(ValueError, match="x0 must not hold the mask token 3"):
        dd.hybrid_loss(pa, o.denoiser(pa), torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="x0 must be an integer tensor"):
        dd.prior_kl(p, torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"process.num_classes must equal the oracle's K = 3; got 4"):
        o.denoiser(dd.UniformProcess(4, num_timesteps=5))
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 2"):
        dd.UniformProcess(1)
    with pytest.raises(ValueError, match="schedule must be one of"):
        dd.UniformProcess(3, schedule="cosin")
    with pytest.raises(ValueError, match="process must be one of"):
        dd.build_process("gauss", 3)
    with pytest.raises(ValueError, match="sampler must be one of"):
        dd.sample_discrete(p, o.denoiser(p), (2, 2), sampler="mask_git", nfe=2)
    with pytest.raises(ValueError, match="needs a process with a mask token"):
        dd.sample_discrete(p, o.denoiser(p), (2, 2), sampler="maskgit", nfe=2)
    with pytest.raises(ValueError, match=r"num_steps must be <= T = 5"):
        dd.sample_discrete(p, o.denoiser(p), (2, 2), nfe=6)
    with pytest.raises(ValueError, match=r"nfe must be <= the number of positions L = 2"):
        dd.sample_discrete(pa, o.denoiser(pa), (2, 2), sampler="maskgit", nfe=3)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        dd.MaskGIT(nfe=2, temperature=0.0)
    with pytest.raises(ValueError, match=r"model\(x_t, t\) must return floating x_0 logits of shape"):
        dd.sample_discrete(p, lambda x, t: torch.zeros(*x.shape, 4), (2, 2), nfe=2)
    with pytest.raises(ValueError, match=r"x_T must hold token ids in \[0, 4\)"):
        dd.sample_discrete(pa, o.denoiser(pa), x_T=torch.full((2, 2), 4), nfe=2)
    with pytest.raises(ValueError, match="s and t must be integers with 0 <= s < t <= T = 5"):
        p.transition_matrix(3, 3)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_tensors_follow_the_device(device):
    o = dd.make_categorical_preset("seq16").to(device)
    p = dd.AbsorbingProcess(8, num_timesteps=20).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    for sampler in dd.DISCRETE_SAMPLERS:
        res = dd.sample_discrete(p, o.denoiser(p), (6, 16), sampler=sampler, nfe=4, generator=g)
        assert res.samples.device.type == device
    x0 = o.sample(6, g)
    assert dd.nelbo(p, o.denoiser(p), x0, g).nats.device.type == device


# ---------------------------------------------------------------- network and training loop
def test_hybrid_loss_gradient_is_finite_where_revealed_tokens_make_p_zero():
    # absorbing: a revealed token's reverse kernel is one-hot, p = q = 0 off it; xlogy would give 0/0 there
    from sde_gen.discrete.nets import TokenTransformer

    p = dd.AbsorbingProcess(5, num_timesteps=8)
    torch.manual_seed(0)
    net = TokenTransformer(num_states=6, num_classes=5, num_positions=6, num_timesteps=8, width=16, depth=1, heads=2)
    x0 = torch.randint(0, 5, (32, 2, 3), generator=torch.Generator().manual_seed(0))
    loss = dd.hybrid_loss(p, net, x0, torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(q.grad).all() for q in net.parameters() if q.grad is not None)
    assert net(p.prior_sample((3, 2, 3)), torch.tensor([8, 4, 1])).shape == (3, 2, 3, 5)


def test_fit_lowers_the_hybrid_loss_of_a_small_transformer():
    from sde_gen.discrete.nets import TokenTransformer
    from sde_gen.discrete.training import fit

    o = dd.make_categorical_preset("small4")
    data = o.sample(512, torch.Generator().manual_seed(0))
    p = dd.UniformProcess(4, num_timesteps=10)
    torch.manual_seed(0)
    net = TokenTransformer(num_states=4, num_classes=4, num_positions=4, num_timesteps=10, width=16, depth=1, heads=2)

    def held_out_loss():
        with torch.no_grad():
            return float(dd.hybrid_loss(p, net, data[:256], torch.Generator().manual_seed(9)))

    before = held_out_loss()
    losses = fit(p, net, data, num_steps=30, batch_size=32, lr=1e-2, generator=torch.Generator().manual_seed(1))
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert held_out_loss() < 0.8 * before
    with pytest.raises(ValueError, match=r"data must hold token ids in \[0, 4\)"):
        fit(p, net, torch.full((4, 4), 4), num_steps=1)


def test_maskgit_never_shows_the_model_an_impossible_state():
    # abar_T = 0 under the mutual-information schedule: a state with a revealed token is impossible at
    # t = T, where the exact posterior is 0/0; with 31 of 32 tokens masked and T = 16 the step whose mask
    # probability matches (31/32 > 15/16) is T itself
    probs = torch.tensor([[[0.7, 0.3]] * 32], dtype=torch.float64)
    o = dd.CategoricalMixture([1.0], probs)
    p = dd.AbsorbingProcess(2, num_timesteps=16)
    seen = []

    def model(x_t, t):
        out = o.denoiser(p)(x_t, t)
        seen.append(not bool(torch.isnan(out).any()))  # -inf (an impossible x_0) is fine, NaN is not
        return out

    steps = []
    res = dd.sample_discrete(p, model, (50, 32), sampler="maskgit", nfe=32, choice_temperature=1e6,
                             generator=torch.Generator().manual_seed(0), callback=lambda i, t, x: steps.append(t))
    assert all(seen) and len(seen) == 32 and steps[-1] == 0 and max(steps) < 16
    assert not (res.samples == 2).any()
