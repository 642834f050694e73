"""The chain ELBO for discrete images (the discretised Gaussian decoder L_0, Ho et al. 2020, eq. 13, with
the bins of `bits_per_dim`'s dequantisation) and `sde-gen-eval likelihood.kind=elbo`.

References computed here independently: the decoder's bin probabilities with scipy's normal CDF, and
the exact discrete log-probability of quantised Gaussian data (a product of CDF differences), which
bounds both the ELBO's and the probability-flow ODE's bits/dim from below (Gibbs' inequality)."""
import json
import math
import pathlib

import pytest
import torch
from scipy.stats import norm

from sde_gen import VPSDE, GaussianMixture, bits_per_dim, elbo, estimate_residual, make_preset
from sde_gen.likelihood import discretised_gaussian_log_prob
from sde_gen.samplers.grids import time_grid

f64 = torch.float64
CONF = pathlib.Path(__file__).resolve().parents[1] / "sde_gen" / "conf"


class PixelMap:
    """L levels, pixel units [0, L) -> [-1, 1], like the image datasets."""

    def __init__(self, L):
        self.num_levels, self.model_per_pixel = L, 2.0 / L

    def to_model(self, v):
        return v * self.model_per_pixel - 1.0

    def to_pixels(self, x):
        return (x + 1.0) / self.model_per_pixel


@pytest.mark.parametrize("L", [2, 17, 256])
def test_the_decoder_probabilities_over_all_levels_sum_to_one(L):
    pm = PixelMap(L)
    means = torch.tensor([-3.0, -1.0, -0.999, 0.0, 0.37, 1.0, 3.0], dtype=f64)
    for std in (1e-4, 0.01, 0.3, 5.0):
        k = torch.arange(L, dtype=f64)[:, None].expand(L, means.numel())
        logp = discretised_gaussian_log_prob(k, means.expand(L, -1), std, pm)
        assert torch.isfinite(logp).all() and (logp <= 0).all()
        assert torch.allclose(torch.logsumexp(logp, 0), torch.zeros_like(means), atol=1e-10), (L, std)
        # against scipy's CDF where the bins are not in the far tails
        lo = norm.cdf(((pm.to_model(k) - means) / std).numpy())
        hi = norm.cdf(((pm.to_model(k + 1) - means) / std).numpy())
        lo[0], hi[-1] = 0.0, 1.0
        ref = torch.as_tensor(hi - lo)
        ok = ref > 1e-12
        assert torch.allclose(logp.exp()[ok], ref[ok], rtol=1e-7, atol=1e-15)


def test_the_decoder_is_accurate_in_the_far_tails():
    pm = PixelMap(256)
    k = torch.tensor([[10.0, 250.0, 128.0]], dtype=f64)
    mean = torch.tensor([[0.9, -0.9, 0.0]], dtype=f64)
    logp = discretised_gaussian_log_prob(k, mean, 0.01, pm)
    # a bin ~90 sigma away: log P ~ -z^2 / 2, far below what 1 - Phi could resolve
    assert torch.isfinite(logp).all() and (logp[0, :2] < -3000).all()
    z_lo = (pm.to_model(k[0, 0]) - 0.9) / 0.01
    z_hi = (pm.to_model(k[0, 0] + 1) - 0.9) / 0.01
    ref = norm.logsf(-float(z_hi)) + math.log(-math.expm1(norm.logsf(-float(z_lo)) - norm.logsf(-float(z_hi))))
    assert math.isclose(float(logp[0, 0]), ref, rel_tol=1e-9)


MEAN = torch.tensor([0.1, -0.2, 0.0, 0.3], dtype=f64)
VAR = torch.tensor([0.3, 0.2, 0.4, 0.25], dtype=f64) ** 2
ORACLE = GaussianMixture.gaussian(MEAN, VAR)


def quantised(n, seed, pm):
    x = ORACLE.sample(n, torch.Generator().manual_seed(seed), dtype=f64)
    return pm.to_pixels(x).floor().clamp(0, pm.num_levels - 1).view(n, 1, 2, 2)


def exact_discrete_bits(pixels, pm):
    """-log2 P(k) / D of the quantised Gaussian: each pixel's bin mass under N(MEAN_i, VAR_i)."""
    n = pixels.shape[0]
    lo = pm.to_model(pixels.view(n, 4))
    hi = pm.to_model(pixels.view(n, 4) + 1)
    p = norm.cdf(((hi - MEAN) / VAR.sqrt()).numpy()) - norm.cdf(((lo - MEAN) / VAR.sqrt()).numpy())
    p[(pixels.view(n, 4) == 0).numpy()] = norm.cdf(((hi - MEAN) / VAR.sqrt()).numpy())[(pixels.view(n, 4) == 0).numpy()]
    return -torch.as_tensor(p).log().sum(1) / (4 * math.log(2))


def _score(sde):
    def score(x, t):
        return ORACLE.score(x.flatten(1), t, sde).view_as(x)
    return score


def _image_elbo_gap(sde, pm, pixels, exact, seed):
    """(per-point -ELBO bits/dim - exact discrete bits/dim, its standard error), exact residual, K = 20."""
    def residual(t):  # the exact per-dimension residual of the diagonal Gaussian
        a, s = sde.marginal_coeffs(t)
        return (1 - s[:, None] ** 2 / (a[:, None] ** 2 * VAR + s[:, None] ** 2)).view(-1, 1, 2, 2)

    res = elbo(sde, _score(sde), pixels, 20, variance="analytic_extended", residual=residual, dataset_or_map=pm,
               generator=torch.Generator().manual_seed(seed))
    gap = res.bits_per_dim - exact
    return gap, float(gap.std()) / math.sqrt(gap.shape[0])


@pytest.mark.statistical
def test_image_elbo_bounds_the_exact_discrete_likelihood_tightly(stat_seed):
    """Quantised 4-pixel Gaussian data, 256 levels, the exact continuous score and residual: the chain's
    -ELBO in bits/dim lies above the exact discrete code length (Gibbs + the bound) and within 0.01 of it."""
    sde, pm = VPSDE(), PixelMap(256)
    pixels = quantised(3000, stat_seed(71), pm)
    gap, se = _image_elbo_gap(sde, pm, pixels, exact_discrete_bits(pixels, pm), stat_seed(72))
    assert -4 * se < float(gap.mean()) < 4 * se + 0.01, (float(gap.mean()), se)


@pytest.mark.slow
@pytest.mark.statistical
def test_image_elbo_agrees_with_the_dequantised_ode_bits(stat_seed):
    """The same data: the dequantised PF-ODE bits/dim (`bits_per_dim`) also lie above the exact discrete
    code length, within its small Jensen gap, so the two bounds agree within a few hundredths."""
    sde, pm = VPSDE(), PixelMap(256)
    pixels = quantised(300, stat_seed(74), pm)
    exact = exact_discrete_bits(pixels, pm)
    gap, se = _image_elbo_gap(sde, pm, pixels, exact, stat_seed(72))
    ode = bits_per_dim(sde, _score(sde), pixels, pm, generator=torch.Generator().manual_seed(stat_seed(73)),
                       rtol=1e-5, atol=1e-5)
    ode_gap = ode.bpd - exact
    ode_se = float(ode_gap.std()) / math.sqrt(300)
    assert -4 * ode_se < float(ode_gap.mean()) < 4 * ode_se + 0.04, (float(ode_gap.mean()), ode_se)
    diff = gap - ode_gap  # -ELBO bits - ODE bits, paired per image
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(300) + 0.04, float(diff.mean())


def test_image_elbo_is_the_continuous_chain_at_the_bin_centres_with_the_discrete_decoder():
    """Same draws: L_T and the diffusion terms equal those of the continuous data to_model(k + 1/2); the
    decoder differs by the bin: with a wide bin the discrete decoder costs far less than the density."""
    sde, pm = VPSDE(), PixelMap(4)
    pixels = quantised(64, 3, pm)
    score = _score(sde)
    img = elbo(sde, score, pixels, 6, variance="beta", dataset_or_map=pm, generator=torch.Generator().manual_seed(4))
    cont = elbo(sde, score, pm.to_model(pixels + 0.5), 6, variance="beta", generator=torch.Generator().manual_seed(4))
    assert torch.equal(img.prior_term, cont.prior_term) and torch.equal(img.diffusion_term, cont.diffusion_term)
    # 4 levels: the bin centres lie 25 decoder stds inside their bins, so P(k | x0_hat) ~ 1, never above
    assert (img.decoder_term >= 0).all() and (img.decoder_term < 1e-6).all()
    assert not torch.equal(img.decoder_term, cont.decoder_term)
    with pytest.raises(ValueError, match="integer pixels"):
        elbo(sde, score, pixels + 0.5, 6, dataset_or_map=pm)
    with pytest.raises(ValueError, match="num_levels"):
        elbo(sde, score, pixels, 6, dataset_or_map=object())


# ---- sde-gen-eval likelihood.kind=elbo ----
@pytest.fixture(scope="module")
def hydra_ctx():
    from hydra import initialize_config_dir

    from sde_gen.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        yield


def test_eval_app_elbo_on_an_oracle_matches_a_direct_computation_and_reuses_its_cache(hydra_ctx, tmp_path):
    from hydra import compose

    from sde_gen.apps.evaluate import run_eval

    over = ["source=oracle", "problem=gaussian16d", "num_test=100", "batch_size=64", "device=cpu", "progress=false",
            "likelihood.kind=elbo", "likelihood.num_steps=10", "likelihood.variance=analytic_extended",
            "likelihood.gamma_samples=200", f"likelihood.gamma_cache={tmp_path / 'cache'}"]
    report = run_eval(compose(config_name="eval", overrides=over), str(tmp_path / "a"))
    # the same computation by hand: the app's generator order, the table on its own seeded stream
    sde, oracle = VPSDE(), make_preset("gaussian16d")
    g = torch.Generator().manual_seed(0)
    x = oracle.sample(100, g, dtype=f64)
    data = oracle.sample(200, g, dtype=f64)
    table = estimate_residual(oracle.score_fn(sde), sde, data, time_grid(sde, 10), batch_size=64,
                              generator=torch.Generator().manual_seed(1))
    direct = torch.cat([elbo(sde, oracle.score_fn(sde), c, 10, variance="analytic_extended", residual=table, generator=g).elbo
                        for c in torch.split(x, 64)])
    assert report["likelihood_kind"] == "elbo" and report["num_steps"] == 10 and report["unit"] == "nats"
    assert math.isclose(report["model_logp_nats"]["mean"], float(direct.mean()), rel_tol=1e-9)
    assert report["nfe"] == 200 * 11 + 100 * 11
    # a lower bound: not above the exact log-likelihood of the same points, within Monte Carlo error
    d = report["model_minus_exact_nats_per_dim"]
    assert d["mean"] < 4 * d["std_error"]
    assert json.loads((tmp_path / "a" / "likelihood.json").read_text())["variance"] == "analytic_extended"
    cached = list((tmp_path / "cache").glob("residual_*.pt"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    again = run_eval(compose(config_name="eval", overrides=over), str(tmp_path / "b"))
    assert again["model_logp_nats"] == report["model_logp_nats"] and cached[0].stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_eval_app_elbo_on_an_image_checkpoint(hydra_ctx, tmp_path):
    """A 2-step digits run; bits/dim of the ELBO with the discretised decoder, as a direct call gives
    (slow: the training run and its evaluation take ~30 s on a loaded 2-core machine)."""
    from hydra import compose

    from sde_gen.apps.evaluate import run_eval
    from sde_gen.checkpoint import load_trained
    from sde_gen.training import train

    run = tmp_path / "run"
    cfg = compose(config_name="config", overrides=["data=digits", "train.steps=2", "train.checkpoint_every=2",
                                                   "train.eval_every=100", "train.eval_samples=16", "train.batch_size=8",
                                                   "device=cpu"])
    train(cfg, str(run))
    over = ["source=checkpoint", f"checkpoint={run}", "num_test=6", "device=cpu", "progress=false",
            "likelihood.kind=elbo", "likelihood.num_steps=5", "likelihood.variance=beta"]
    report = run_eval(compose(config_name="eval", overrides=over), str(tmp_path / "eval"))
    trained = load_trained(str(run))

    def score(x, t):
        return trained.model(x.float(), t.float()).double()

    pixels = trained.dataset.test_pixels[:6].to(f64)
    direct = elbo(trained.sde, score, pixels, 5, variance="beta", dataset_or_map=trained.dataset,
                  generator=torch.Generator().manual_seed(0))
    assert report["unit"] == "bits/dim" and report["num_levels"] == 17 and report["likelihood_kind"] == "elbo"
    assert math.isclose(report["bits_per_dim"]["mean"], float(direct.bits_per_dim.mean()), rel_tol=1e-6)
    assert report["bits_per_dim"]["mean"] > 0


@pytest.mark.parametrize("override, field", [
    ("likelihood.kind=chain", "likelihood.kind"),
    ("likelihood.variance=fixed", "likelihood.variance"),
    ("likelihood.num_steps=0", "likelihood.num_steps"),
    ("likelihood.grid=cosine", "likelihood.grid"),
    ("likelihood.gamma_samples=0", "likelihood.gamma_samples"),
    ("likelihood.prior=exact", "likelihood.prior"),
])
def test_eval_app_elbo_options_fail_at_start_up(hydra_ctx, tmp_path, override, field):
    from hydra import compose

    from sde_gen.apps.evaluate import run_eval
    from sde_gen.config import ConfigError

    cfg = compose(config_name="eval", overrides=["likelihood.kind=elbo", override, "device=cpu"])
    with pytest.raises(ConfigError, match=field):
        run_eval(cfg, str(tmp_path))
    assert not (tmp_path / "likelihood.json").exists()
