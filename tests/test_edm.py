"""The EDM formulation (Karras et al. 2022): the sigma(t) = t SDE at the ends of its range, the
preconditioning of `ScoreModel(parameterization="edm")` against the oracle's exact score and the
unit-variance claims of Table 1 / App. B.6, and the log-normal times and EDM weight of the loss."""
import math

import pytest
import torch
from torch import nn

from sde_gen import EDMSDE, SDES, VESDE, VPSDE, GaussianMixture, ScoreModel, build_sde, dsm_loss
from sde_gen.losses import DenoisingScoreMatching, sample_time
from sde_gen.parameterization import edm_preconditioning

from .conftest import ALL_SDES_T, SDE_T_IDS

f64 = torch.float64


def test_edm_sde_is_registered_and_is_sigma_equals_t():
    assert SDES["edm"] is EDMSDE and isinstance(build_sde("edm"), EDMSDE)
    sde = EDMSDE()
    assert (sde.sigma_min, sde.sigma_max) == (0.002, 80.0) == (sde.eps, sde.T)
    t = torch.tensor([0.0, 0.002, 0.5, 1.0, 79.0, 80.0], dtype=f64)
    a, s = sde.marginal_coeffs(t)
    assert torch.equal(a, torch.ones_like(t)) and torch.equal(s, t)  # s(t) = t, a = 1
    # g(t)^2 = d sigma^2 / dt = 2 t, f = 0
    assert torch.allclose(sde.diffusion(t) ** 2, 2 * t) and torch.equal(sde.drift_coeff(t), torch.zeros_like(t))
    assert sde.prior_std == 80.0
    # half log-SNR -log t and its inverse, total at the ends
    lam = sde.half_log_snr(t)
    assert lam[0] == math.inf and torch.allclose(lam[1:], -torch.log(t[1:]))
    assert torch.allclose(sde.time_at_half_log_snr(lam), t, rtol=1e-15)
    ends = sde.time_at_half_log_snr(torch.tensor([math.inf, -math.inf], dtype=f64))
    assert ends[0] == 0 and ends[1] == math.inf


def test_edm_transition_never_negative_and_exact_near_the_diagonal():
    sde = EDMSDE()
    s = torch.tensor([0.0, 0.002, 1.0, 80.0, 80.0, 1.0], dtype=f64)
    t = torch.tensor([0.002, 0.002, 1.0 + 1e-12, 80.0, 1.0, 0.5], dtype=f64)
    ratio, v = sde.transition_coeffs(s, t)
    assert torch.equal(ratio, torch.ones_like(t))
    assert (v >= 0).all()
    expected = torch.tensor([0.002 ** 2, 0.0, 2e-12, 0.0, 0.0, 0.0], dtype=f64)
    assert torch.allclose(v, expected, rtol=1e-3, atol=0)  # 1e-12 apart: (t - s)(t + s), no cancellation
    with pytest.raises(ValueError, match="eps"):
        EDMSDE(T=80.0, eps=80.0)
    with pytest.raises(ValueError, match="T"):
        EDMSDE(T=-1.0)


class OracleDenoiserBackbone(nn.Module):
    """F* = (D*(x~) - c_skip x~) / c_out from only what a backbone sees: the input c_in x~ and c_noise."""

    def __init__(self, oracle, sde, sigma_data):
        super().__init__()
        self.oracle, self.sde, self.sigma_data = oracle, sde, sigma_data

    def forward(self, x_in, c_noise, y=None):
        sigma = torch.exp(4 * c_noise)  # c_noise = ln(sigma) / 4
        t = self.sde.time_at_half_log_snr(-torch.log(sigma))
        norm = torch.sqrt(sigma ** 2 + self.sigma_data ** 2)[:, None]
        x_tilde = x_in * norm  # c_in = 1 / norm
        a, s = self.sde.marginal_coeffs(t)
        x = a[:, None] * x_tilde
        denoised = (x + s[:, None] ** 2 * self.oracle.score(x, t, self.sde)) / a[:, None]  # Tweedie
        c_skip = self.sigma_data ** 2 / norm ** 2
        c_out = sigma[:, None] * self.sigma_data / norm
        return (denoised - c_skip * x_tilde) / c_out


@pytest.mark.parametrize("sde", ALL_SDES_T, ids=SDE_T_IDS)
def test_edm_preconditioning_gives_the_exact_score_from_the_exact_denoiser(sde):
    oracle = GaussianMixture.preset("ring2d")
    sigma_data = 0.7
    model = ScoreModel(OracleDenoiserBackbone(oracle, sde, sigma_data), sde, data_std=sigma_data, parameterization="edm")
    g = torch.Generator().manual_seed(0)
    t = torch.cat([torch.tensor([sde.eps, sde.T], dtype=f64),
                   sde.eps + (sde.T - sde.eps) * torch.rand(30, generator=g, dtype=f64)])
    x = sde.perturb(oracle.sample(32, g, dtype=f64), t, torch.randn(32, 2, generator=g, dtype=f64))
    expected = oracle.score(x, t, sde)
    got = model(x, t)
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-8 * expected.abs().max())


@pytest.mark.parametrize("sde", [EDMSDE(), VPSDE(), VESDE()], ids=["edm", "vp", "ve"])
def test_edm_inputs_and_targets_have_unit_variance_on_gaussian_data(sde):
    """Karras et al. 2022, App. B.6: Var[c_in x~] = 1 and Var[F_target] = 1 for data of std sigma_data,
    at every noise level; the EDM loss weight makes the loss of F = 0 equal 1/2 E[F_target^2] = 1/2."""
    sigma_data, n, d = 0.5, 4096, 8
    g = torch.Generator().manual_seed(1)
    recorded = {}

    class Zero(nn.Module):
        def forward(self, x_in, c_noise, y=None):
            recorded["x_in"] = x_in
            return torch.zeros_like(x_in)

    model = ScoreModel(Zero(), sde, data_std=sigma_data, parameterization="edm")
    for t_val in (sde.eps, 0.01 * sde.T, 0.3 * sde.T, sde.T):
        t = torch.full((n,), t_val, dtype=f64)
        x0 = sigma_data * torch.randn(n, d, generator=g, dtype=f64)
        z = torch.randn(n, d, generator=g, dtype=f64)
        loss = dsm_loss(model, sde, x0, weighting="edm", sigma_data=sigma_data, t=t, noise=z)
        var_in = recorded["x_in"].var()
        # F_target = (x0 - c_skip x~) / c_out, computed independently
        a, s = sde.marginal_coeffs(t)
        sigma = s / a
        x_tilde = x0 + sigma[:, None] * z
        c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
        c_out = sigma * sigma_data / torch.sqrt(sigma ** 2 + sigma_data ** 2)
        target = (x0 - c_skip[:, None] * x_tilde) / c_out[:, None]
        # 4096 x 8 draws: the sample variance of a unit variance has sd ~ sqrt(2 / 32768) = 0.008
        assert abs(float(var_in) - 1) < 0.05, (t_val, float(var_in))
        assert abs(float(target.var()) - 1) < 0.05, (t_val, float(target.var()))
        # the loss of the zero network is 1/2 ||F_target||^2 / d per sample, exactly
        assert torch.allclose(loss, 0.5 * target.pow(2).mean(1), rtol=1e-9)


def test_edm_preconditioning_coefficients_match_table_1_for_the_edm_sde():
    sde, sd = EDMSDE(), 0.5
    t = torch.tensor([0.002, 0.5, 80.0], dtype=f64)
    a, sigma, c_skip, c_out, c_in, c_noise = edm_preconditioning(sde, t, sd)
    assert torch.equal(a, torch.ones_like(t)) and torch.equal(sigma, t)
    assert torch.allclose(c_skip, sd ** 2 / (t ** 2 + sd ** 2))
    assert torch.allclose(c_out, t * sd / (sd ** 2 + t ** 2).sqrt())
    assert torch.allclose(c_in, 1 / (t ** 2 + sd ** 2).sqrt())
    assert torch.allclose(c_noise, 0.25 * torch.log(t))


def test_score_model_rejects_unknown_parameterization():
    with pytest.raises(ValueError, match="parameterization.*edm"):
        ScoreModel(nn.Identity(), VPSDE(), parameterization="v")


@pytest.mark.statistical
@pytest.mark.parametrize("sde", [EDMSDE(), VPSDE()], ids=["edm", "vp"])
def test_log_normal_times_give_log_normal_noise_levels(sde, stat_seed):
    n = 20000
    t, w = sample_time(sde, n, generator=torch.Generator().manual_seed(stat_seed(5)), dtype=f64,
                       distribution="log_normal", p_mean=-1.2, p_std=1.2)
    assert torch.equal(w, torch.ones_like(w)) and (t >= sde.eps).all() and (t <= sde.T).all()
    a, s = sde.marginal_coeffs(t)
    log_sigma = torch.log(s / a)
    # clamping to [eps, T] only touches the far tails (beyond ~4 sd for EDM); mean and sd of ln sigma
    inner = log_sigma[(t > sde.eps) & (t < sde.T)]
    assert inner.numel() > 0.99 * n
    assert abs(float(log_sigma.mean()) + 1.2) < 5 * 1.2 / math.sqrt(n)
    assert abs(float(log_sigma.std()) - 1.2) < 0.03
    # a Kolmogorov-Smirnov check against N(-1.2, 1.2^2) on the unclamped draws
    sorted_ls, _ = torch.sort(log_sigma)
    cdf = 0.5 * (1 + torch.erf((sorted_ls + 1.2) / (1.2 * math.sqrt(2))))
    emp = torch.arange(1, n + 1, dtype=f64) / n
    assert float((cdf - emp).abs().max()) < 1.63 / math.sqrt(n) + 1e-3


def test_loss_options_are_validated_with_the_field_named():
    with pytest.raises(ValueError, match="time_distribution.*log_normal"):
        DenoisingScoreMatching(time_distribution="lognormal")
    with pytest.raises(ValueError, match="p_std"):
        DenoisingScoreMatching(time_distribution="log_normal", p_std=0.0)
    with pytest.raises(ValueError, match="sigma_data"):
        DenoisingScoreMatching(weighting="edm", sigma_data=-1.0)
    with pytest.raises(ValueError, match="p_mean"):
        DenoisingScoreMatching(p_mean=float("nan"))
    with pytest.raises(ValueError, match="importance_sampling"):
        DenoisingScoreMatching(weighting="likelihood", importance_sampling=True, time_distribution="log_normal")
    with pytest.raises(ValueError, match="weighting.*edm"):
        DenoisingScoreMatching(weighting="karras")


def test_edm_loss_config_composes_and_builds():
    import pathlib

    from hydra import compose, initialize_config_dir

    from sde_gen.config import instantiate, register_configs

    register_configs()
    conf = pathlib.Path(__file__).resolve().parents[1] / "sde_gen" / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose(config_name=None, overrides=["+sde=edm", "+loss=dsm", "loss.weighting=edm",
                                                   "loss.time_distribution=log_normal"])
        with pytest.raises(Exception, match="time_distribution"):
            instantiate(compose(config_name=None, overrides=["+loss=dsm", "loss.time_distribution=gamma"]).loss, "loss")
    sde, loss = instantiate(cfg.sde, "sde"), instantiate(cfg.loss, "loss")
    assert isinstance(sde, EDMSDE) and (sde.T, sde.eps) == (80.0, 0.002)
    assert (loss.weighting, loss.time_distribution, loss.p_mean, loss.p_std, loss.sigma_data) == ("edm", "log_normal", -1.2, 1.2, 0.5)


def test_probability_flow_likelihood_is_exact_under_the_edm_sde():
    """The ODE likelihood (Song et al. 2021, eq. 39) over sigma in [0.002, 80] recovers log p_{t_min}
    of a 16-D Gaussian when it starts from the exact p_T (with the N(0, 80^2 I) prior each sample is
    off by log p_T(z) - log prior(z), a few 1e-2 nats)."""
    from sde_gen import log_likelihood, make_preset

    sde, gauss = EDMSDE(), make_preset("gaussian16d")
    x = gauss.perturbed(sde, sde.eps).sample(16, torch.Generator().manual_seed(4), dtype=f64)
    res = log_likelihood(sde, gauss.score_fn(sde), x, rtol=1e-6, atol=1e-6,
                         prior_logp=gauss.perturbed(sde, sde.T).log_prob)
    exact = gauss.perturbed(sde, sde.eps).log_prob(x)
    assert (res.logp - exact).abs().max() / 16 < 1e-4, (res.logp - exact)


def test_model_node_parameterization_builds_the_edm_score_model():
    from omegaconf import OmegaConf

    from sde_gen.config import ConfigError, register_configs
    from sde_gen.nets import build_score_model

    register_configs()
    node = OmegaConf.create({"_target_": "sde_gen.nets.mlp.MLP", "hidden": 16, "depth": 1, "parameterization": "edm"})
    model = build_score_model(node, EDMSDE(), (3,), data_std=0.7)
    assert model.parameterization == "edm" and model.data_std == 0.7
    x, t = torch.randn(4, 3), torch.full((4,), 1.0)
    assert model(x, t).shape == x.shape
    assert build_score_model(OmegaConf.create({"_target_": "sde_gen.nets.mlp.MLP", "hidden": 16, "depth": 1}),
                             EDMSDE(), (3,)).parameterization == "score"
    with pytest.raises(ConfigError, match="model.parameterization must be one of"):
        build_score_model(OmegaConf.merge(node, {"parameterization": "v"}), EDMSDE(), (3,))
