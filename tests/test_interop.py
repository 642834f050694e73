"""sde_gen.interop: DDPM noise predictors (diffusers) and k-diffusion denoisers as scores, and back.

References are computed independently of the code under test: diffusers' own alpha_bar table and
UNet call at integer timesteps, the exact Gaussian-mixture score on another SDE (the EDM SDE, where
t IS the k-diffusion sigma), and the direct sampler paths without the wrappers.
"""
import importlib.util
import json
import math

import pytest
import torch

from sde_gen import EDMSDE, VESDE, VPSDE, make_preset, sample
from sde_gen.interop import (
    DDPMTimesteps,
    DenoiserScore,
    EpsModelScore,
    KDiffusionDenoiser,
    ddpm_alphas_cumprod,
    ddpm_vp_sde,
    load_diffusers_pipeline,
)

N = 1000


def _tiny_unet(diffusers, seed=0, **kw):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8,
                                 **kw).eval()


def _oracle_eps_model(oracle, alphas_cumprod, prediction_type):
    """A DDPM-style model at integer timesteps from the exact score on the EDM SDE (t = sigma):
    with x_vp = a x0 + s z, sigma_k = s / a from the table, x~ = x_vp / a, eps = -sigma score_edm(x~, sigma)."""
    edm = EDMSDE(T=1e4, eps=1e-6)
    score_edm = oracle.score_fn(edm)
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)

    def model(x_vp, tau):
        k = tau.round().long()
        table = abar.to(x_vp.device)
        a, s = torch.sqrt(table[k])[:, None].to(x_vp.dtype), torch.sqrt(1 - table[k])[:, None].to(x_vp.dtype)
        sigma = s / a
        x_tilde = x_vp / a
        score = score_edm(x_tilde, sigma[:, 0])
        eps = -sigma * score
        x0 = x_tilde + sigma ** 2 * score
        return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[prediction_type]

    return model


# ---------------------------------------------------------------- the time map
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_ddpm_table_and_time_map(schedule):
    abar = ddpm_alphas_cumprod(N, beta_schedule=schedule)
    # the linear chain's alpha_bar from its definition, term by term
    if schedule == "linear":
        betas = [1e-4 + k / (N - 1) * (0.02 - 1e-4) for k in range(N)]
        ref = torch.tensor([math.prod(1 - b for b in betas[: k + 1]) for k in (0, 1, 499, 999)], dtype=torch.float64)
        torch.testing.assert_close(abar[[0, 1, 499, 999]], ref, rtol=1e-10, atol=0)
    sde = ddpm_vp_sde(N, beta_schedule=schedule)
    steps = DDPMTimesteps(abar, sde)
    tk = steps.times()
    # step k at its own time is timestep k; step 0 is the SDE's eps
    torch.testing.assert_close(steps(tk), torch.arange(N, dtype=torch.float64), atol=1e-8, rtol=0)
    assert tk[0] == pytest.approx(sde.eps, rel=1e-9)
    # the matched noise level: alpha_bar of the SDE at t_k equals the table
    a, _ = sde.marginal_coeffs(tk)
    torch.testing.assert_close(a ** 2, abar, rtol=1e-9, atol=0)
    # the continuous limit: t_k is near (k + 1) / N (Song et al. 2021, App. B)
    assert float((tk - torch.arange(1, N + 1) / N).abs().max()) < 4e-3
    # between steps tau is monotone; outside the table it is clamped to its ends
    t = torch.linspace(sde.eps, sde.T, 257, dtype=torch.float64)
    assert bool((steps(t).diff() > 0).all())
    ends = steps(torch.tensor([0.0, sde.eps / 2, 50.0], dtype=torch.float64))
    assert ends.tolist() == [0.0, 0.0, N - 1.0]


def test_time_map_bad_input():
    with pytest.raises(ValueError, match="alphas_cumprod"):
        DDPMTimesteps(torch.tensor([0.5, 0.7]), VPSDE())
    with pytest.raises(ValueError, match="alphas_cumprod"):
        DDPMTimesteps(torch.tensor([1.0, 0.5]), VPSDE())
    with pytest.raises(ValueError, match="beta_schedule"):
        ddpm_vp_sde(N, beta_schedule="scaled_linear")
    with pytest.raises(ValueError, match="prediction_type"):
        EpsModelScore(lambda x, t: x, ddpm_alphas_cumprod(10), VPSDE(), prediction_type="eps")


# ---------------------------------------------------------------- eps models as scores, against the oracle
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_eps_model_score_is_the_exact_score_at_matching_times(prediction_type, sde):
    """An exact DDPM-style model (built on the EDM SDE) gives the exact score of another SDE."""
    oracle = make_preset("ring2d")
    abar = ddpm_alphas_cumprod(N)
    score = EpsModelScore(_oracle_eps_model(oracle, abar, prediction_type), abar, sde, prediction_type)
    g = torch.Generator().manual_seed(0)
    k = torch.tensor([0, 3, 100, 500, 900, 999])
    t = DDPMTimesteps(abar, sde).times()[k]
    keep = t <= sde.T  # the chain's last steps may be noisier than the SDE at T
    t, k = t[keep], k[keep]
    x0 = oracle.sample(len(k), generator=g, dtype=torch.float64)
    mean, std = sde.marginal(x0, t)
    x = mean + std.reshape(-1, 1) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(score(x, t), oracle.score_fn(sde)(x, t), rtol=1e-7, atol=1e-9)


def test_diffusers_unet_score_is_minus_eps_over_sigma():
    diffusers = pytest.importorskip("diffusers")
    unet = _tiny_unet(diffusers)
    for schedule in ("linear", "squaredcos_cap_v2"):
        sched = diffusers.DDPMScheduler(num_train_timesteps=N, beta_schedule=schedule)
        sde = ddpm_vp_sde(**sched.config)
        score = EpsModelScore(unet, sched.alphas_cumprod, sde)
        k = torch.tensor([0, 1, 250, 998])
        t = score.timesteps.times()[k].float()
        x = torch.randn(len(k), 1, 8, 8, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = -unet(x, k).sample / torch.sqrt(1 - sched.alphas_cumprod[k]).view(-1, 1, 1, 1)
            torch.testing.assert_close(score(x, t), ref, rtol=1e-4, atol=1e-4)


def test_diffusers_pipeline_folder_loads_as_sde_and_score(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    unet = _tiny_unet(diffusers, seed=3)
    sched = diffusers.DDPMScheduler(num_train_timesteps=N, beta_start=2e-4, beta_end=0.03)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "pipe")
    sde, score = load_diffusers_pipeline(str(tmp_path / "pipe"))
    assert isinstance(sde, VPSDE) and sde.schedule == "linear"
    assert (sde.beta_min, sde.beta_max) == pytest.approx((N * 2e-4, N * 0.03))
    k = torch.tensor([0, 40, 700])
    t = score.timesteps.times()[k].float()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = -unet(x, k).sample / torch.sqrt(1 - sched.alphas_cumprod[k]).view(-1, 1, 1, 1)
        torch.testing.assert_close(score(x, t), ref, rtol=1e-4, atol=1e-4)
    # sde_gen's samplers run on it
    res = sample(sde, score, (2, 1, 8, 8), sampler="ddim", nfe=3, generator=torch.Generator().manual_seed(0))
    assert res.samples.shape == (2, 1, 8, 8) and bool(torch.isfinite(res.samples).all()) and res.nfe == 3
    # what it refuses, naming the option
    config_file = tmp_path / "pipe" / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(dict(config, beta_schedule="scaled_linear")))
    with pytest.raises(ValueError, match="beta_schedule"):
        load_diffusers_pipeline(str(tmp_path / "pipe"))
    with pytest.raises(ValueError, match="pipeline folder"):
        load_diffusers_pipeline(str(tmp_path))


# ---------------------------------------------------------------- model=diffusers_unet
DIGITS_TINY = ["model=diffusers_unet", "data=digits", "model.block_out_channels=[8,16]", "model.norm_num_groups=4",
               "model.attention=false", "train.batch_size=16", "lr_scheduler.warmup=2", "train.eval_samples=32",
               "train.eval_projections=8", "train.noise_floor_replicates=2", "train.score_error_samples=16",
               "train.progress=false", "train.plots=false", "sampler.nfe=2", "device=cpu"]


@pytest.fixture(scope="module")
def diffusers_run(tmp_path_factory):
    """A real three-step training run with `model=diffusers_unet` on the 8x8 digits."""
    pytest.importorskip("diffusers")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sde_gen.config import CONF_DIR, register_configs
    from sde_gen.training import train

    run_dir = tmp_path_factory.mktemp("diffusers_run")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="config", overrides=[*DIGITS_TINY, "train.steps=3"])
    GlobalHydra.instance().clear()
    out = train(cfg, str(run_dir))
    return run_dir, out


def test_diffusers_unet_backbone_trains_and_loads(diffusers_run):
    from sde_gen import load_trained
    from sde_gen.nets import DiffusersUNet

    run_dir, out = diffusers_run
    assert out["step"] == 3 and math.isfinite(out["final"]["sw2"])
    trained = load_trained(str(run_dir), dataset=False)
    backbone = trained.model.backbone
    assert isinstance(backbone, DiffusersUNet)
    # the score is -UNet(c_in x, 999 t) / s(t): the UNet keeps diffusers' meaning (a noise prediction)
    sde, std = trained.sde, trained.model.data_std
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0.01, 0.5, 1.0])
    a, s = (c.view(-1, 1, 1, 1) for c in sde.marginal_coeffs(t))
    ref = -backbone.unet(x / torch.sqrt(a ** 2 * std ** 2 + s ** 2), 999 * t).sample / s
    torch.testing.assert_close(trained.model(x, t), ref)


@pytest.mark.slow  # eight Adam steps of a UNet2DModel: ~35 s on a loaded 2-core machine; trains_and_loads covers the fast tier
def test_diffusers_unet_backbone_learns():
    """A few Adam steps of the DSM loss on one batch lower it (the backbone is trainable end to end)."""
    pytest.importorskip("diffusers")
    from sde_gen import ScoreModel, dsm_loss
    from sde_gen.nets import DiffusersUNet

    torch.manual_seed(0)
    sde = VPSDE()
    model = ScoreModel(DiffusersUNet(1, 8, block_out_channels=(8, 16), norm_num_groups=4, attention=False), sde)
    x0 = torch.rand(16, 1, 8, 8) * 2 - 1
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss():
        return dsm_loss(model, sde, x0, generator=torch.Generator().manual_seed(1)).mean()

    first = float(loss().detach())
    for _ in range(8):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert float(loss().detach()) < 0.8 * first


def test_diffusers_unet_options_are_checked():
    pytest.importorskip("diffusers")
    from sde_gen.nets import DiffusersUNet

    with pytest.raises(ValueError, match="block_out_channels"):
        DiffusersUNet(1, 8, block_out_channels=(8, 12), norm_num_groups=8)
    with pytest.raises(ValueError, match="image_size"):
        DiffusersUNet(1, 6, block_out_channels=(8, 16, 16), norm_num_groups=4)


# ---------------------------------------------------------------- k-diffusion
def _edm_denoiser(oracle):
    """The exact k-diffusion denoiser written directly: on the EDM SDE t IS sigma and a = 1, so
    D(x, sigma) = x + sigma^2 score_edm(x, sigma) (Tweedie)."""
    score_edm = oracle.score_fn(EDMSDE(T=1e4, eps=1e-6))

    def denoiser(x, sigma):
        sigma = sigma.reshape(-1).expand(x.shape[0]).to(x.dtype)
        return x + sigma[:, None] ** 2 * score_edm(x, sigma)

    return denoiser


def _k_sampling():
    """k-diffusion's samplers; `import k_diffusion` itself may fail (it needs torchvision and more),
    so only the package's presence is required (see `import_k_diffusion`)."""
    if importlib.util.find_spec("k_diffusion") is None:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion torchsde)")
    pytest.importorskip("torchsde")  # k_diffusion.sampling imports it
    from sde_gen.interop import import_k_diffusion

    return import_k_diffusion("sampling")


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_k_diffusion_sampler_on_an_sde_gen_score_equals_the_direct_path(sde):
    K = _k_sampling()
    oracle = make_preset("ring2d")
    wrapped = KDiffusionDenoiser(oracle.score_fn(sde), sde)
    sigmas = K.get_sigmas_karras(12, wrapped.sigma_min, wrapped.sigma_max, rho=7.0, device="cpu").to(torch.float64)
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]
    through = K.sample_heun(wrapped, x_T, sigmas, disable=True)
    direct = K.sample_heun(_edm_denoiser(oracle), x_T, sigmas, disable=True)
    torch.testing.assert_close(through, direct, rtol=1e-7, atol=1e-8)
    # the grid ends at sigma = 0, where the denoiser is the identity
    torch.testing.assert_close(wrapped(x_T, torch.zeros(256, dtype=torch.float64)), x_T, rtol=0, atol=0)


@pytest.mark.parametrize("sampler", ["heun", "dpm_solver"])
def test_sde_gen_sampler_on_a_k_diffusion_denoiser_equals_the_direct_path(sampler):
    """The exact denoiser (k-diffusion's convention) through `DenoiserScore` = the exact score."""
    oracle, sde = make_preset("ring2d"), VPSDE()
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    through = sample(sde, DenoiserScore(_edm_denoiser(oracle), sde), x_T=x_T, sampler=sampler, nfe=12).samples
    direct = sample(sde, oracle.score_fn(sde), x_T=x_T, sampler=sampler, nfe=12).samples
    torch.testing.assert_close(through, direct, rtol=1e-7, atol=1e-8)


def test_sde_gen_sampler_on_a_k_diffusion_wrapped_ddpm_model_equals_the_direct_path():
    """k-diffusion's own DDPM wrapper (`DiscreteEpsDDPMDenoiser`, its sigma <-> timestep interpolation)
    through `DenoiserScore` = the same eps model through `EpsModelScore`: both map noise levels alike."""
    _k_sampling()
    from sde_gen.interop import import_k_diffusion

    external = import_k_diffusion("external")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2)).double()

    def eps_model(x, tau):
        return net(torch.cat([x, tau[:, None].to(x.dtype) / N], 1))

    abar = ddpm_alphas_cumprod(N)
    sde = ddpm_vp_sde(N)
    k_wrapped = external.DiscreteEpsDDPMDenoiser(eps_model, abar, quantize=False)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    through = sample(sde, DenoiserScore(k_wrapped, sde), x_T=x_T, sampler="heun", nfe=10).samples
    direct = sample(sde, EpsModelScore(eps_model, abar, sde), x_T=x_T, sampler="heun", nfe=10).samples
    torch.testing.assert_close(through, direct, rtol=1e-6, atol=1e-7)


def test_import_k_diffusion_bad_module():
    from sde_gen.interop import import_k_diffusion

    with pytest.raises(ValueError, match="module"):
        import_k_diffusion("layers")


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wrappers_follow_the_input_device_and_dtype(device, dtype):
    """Every wrapper returns x's device and dtype, and the round trip score -> denoiser -> score is
    the identity (up to rounding) at times inside (eps, T)."""
    oracle, sde = make_preset("ring2d"), VPSDE().to(device)
    score_fn = oracle.score_fn(sde)
    abar = ddpm_alphas_cumprod(N)
    eps_score = EpsModelScore(_oracle_eps_model(oracle, abar, "epsilon"), abar, sde).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 2, generator=g, dtype=dtype).to(device)
    t = torch.linspace(0.05, 0.95, 8, dtype=dtype, device=device)
    round_trip = DenoiserScore(KDiffusionDenoiser(score_fn, sde), sde)
    for out in (eps_score(x, t), round_trip(x, t), KDiffusionDenoiser(score_fn, sde)(x, t)):
        assert out.device == x.device and out.dtype == dtype
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(round_trip(x, t), score_fn(x, t), **tol)


def test_missing_optional_packages_are_one_clear_error(monkeypatch, tmp_path):
    """Without diffusers / safetensors the library still imports; using them names the extra to install."""
    import sys

    from omegaconf import OmegaConf

    from sde_gen import export_trained
    from sde_gen.config import ConfigError
    from sde_gen.nets import build_score_model

    monkeypatch.setitem(sys.modules, "diffusers", None)  # an import of it now fails
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ConfigError, match=r"model: .*pip install 'sde_gen\[interop\]'"):
        build_score_model(OmegaConf.create({"_target_": "sde_gen.nets.diffusers_unet.DiffusersUNet"}), VPSDE(), (1, 8, 8))
    with pytest.raises(ImportError, match=r"sde_gen\[interop\]") as err:
        load_diffusers_pipeline(str(tmp_path))
    assert err.value.name == "diffusers"
    with pytest.raises(ImportError, match=r"sde_gen\[export\]"):
        export_trained(str(tmp_path))
