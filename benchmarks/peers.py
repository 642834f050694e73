"""Adapters that run other libraries' samplers on our SDEs with our exact score.

Every adapter is `run(sde, score_fn, x_T, nfe, generator) -> (samples, nfe_spent)`: it starts from
the SAME x_T ~ prior at t = T as our samplers (rescaled to the peer's convention), calls our
`score_fn(x, t)` (timed and counted by the caller) and returns samples in data space. Mappings,
with x_t = a(t) x_0 + s(t) z, sigma = s / a (the "VE" noise level), lambda = log(a / s):

* diffusers discrete VP schedulers (DDIM, DPM-Solver++ multistep, UniPC, Heun): the training chain
  has N = 1000 steps on the times t_k = eps + (T - eps) k / (N - 1), with trained_betas chosen so
  that alphas_cumprod[k] = a(t_k)^2 exactly (beta_k = 1 - abar_k / abar_{k-1}), so timestep k IS
  our time t_k. Their "epsilon" model output is eps = -s(t) score(x, t). Their sample is our VP x
  for DDIM / DPM-Solver / UniPC; HeunDiscreteScheduler works on x / a = x_0 + sigma z (input
  scaled by `scale_model_input`), so x_T is multiplied by init_noise_sigma = sqrt(1 + sigma_max^2)
  and the time is recovered from the scheduler's current sigma: t = lambda^{-1}(-log sigma).
  Timestep spacing "trailing" (DDIM, UniPC, DPM) starts at t = T, where x_T lives.
* diffusers ScoreSdeVpScheduler (Song et al.'s Euler-Maruyama predictor): continuous VP time; its
  model output is -std * score (it divides by -std). VP linear schedule only.
* diffusers ScoreSdeVeScheduler (reverse-diffusion predictor, optionally + Langevin corrector):
  continuous VE time, model output = score; VE only.
* torchsde `sdeint` (Euler, Ito, diagonal noise) on the reverse SDE in the reversed time
  tau = T - t: dx = -[f(x, t) - g(t)^2 score] dtau + g(t) dW_tau, fixed dt = (T - eps) / steps.
* k-diffusion samplers: the denoiser D(x_kd, sigma) = x0_hat = (x + s^2 score(x, t)) / a with
  x = a x_kd, t = lambda^{-1}(-log sigma) (Tweedie, any SDE), Karras sigmas from
  sigma(T) to sigma(eps) then 0; x_kd(T) = x_T / a(T). `sde_gen.interop.import_k_diffusion` loads
  `k_diffusion/sampling.py` on its own when the package's full import fails, so its declared
  dependencies (torchvision, training tools) are not needed.
* scipy `solve_ivp` (RK45) on the probability-flow ODE from T to eps with numpy round trips at
  every evaluation and a final Tweedie step (the approach of the original score-SDE code); its
  NFE is chosen by the tolerance, not by a budget: runs at several tolerances report actual NFE.

A peer whose package is missing is returned with `error` set, and the benchmark prints it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from sde_gen.parameterization import x0_from_score


@dataclass
class Peer:
    """A peer sampler: `run(sde, score_fn, x_T, nfe, generator) -> (samples, nfe_spent)`."""

    name: str
    deterministic: bool
    run: Optional[Callable] = None
    error: Optional[str] = None
    sdes: tuple = ("vp", "ve", "subvp")  # SDE kinds it applies to
    budget_free: bool = False  # NFE set by a tolerance (scipy)
    tolerances: List[float] = field(default_factory=list)


def _t_of_sigma(sde, sigma: torch.Tensor) -> torch.Tensor:
    return sde.time_at_half_log_snr(-torch.log(sigma.to(torch.float64)))


def _coeffs64(sde, t):
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    a, s = sde.marginal_coeffs(t)
    return a, s


# ---- diffusers ----
def _train_chain(sde, N=1000):
    tk = sde.eps + (sde.T - sde.eps) * torch.arange(N, dtype=torch.float64) / (N - 1)
    log_a = sde.log_mean_coeff(tk)
    abar = torch.exp(2 * log_a)
    betas = torch.empty(N, dtype=torch.float64)
    betas[0] = 1 - abar[0]
    betas[1:] = -torch.expm1(2 * (log_a[1:] - log_a[:-1]))
    return tk, betas


def _diffusers_discrete(cls_name: str, deterministic=True, **kwargs):
    import diffusers

    cls = getattr(diffusers, cls_name)

    def run(sde, score_fn, x_T, nfe, generator):
        tk, betas = _train_chain(sde)
        sched = cls(num_train_timesteps=len(tk), trained_betas=betas.numpy(), **kwargs)
        heun = cls_name == "HeunDiscreteScheduler"
        steps = (nfe + 1) // 2 if heun else nfe
        sched.set_timesteps(steps)
        x = x_T * sched.init_noise_sigma
        B = x.shape[0]
        for k in sched.timesteps:
            if heun:
                x_in = sched.scale_model_input(x, k)
                sigma = sched.sigmas[sched.step_index].reshape(1)
                t = _t_of_sigma(sde, sigma)
            else:
                x_in = x
                t = tk[int(k)].reshape(1)
            tb = t.expand(B).to(x.device)
            eps = -_coeffs64(sde, t)[1].to(x) * score_fn(x_in, tb.to(x.dtype))
            step_kwargs = {"eta": 0.0} if cls_name == "DDIMScheduler" else {}
            x = sched.step(eps, k, x, **step_kwargs).prev_sample
        return x, None

    return run


def _score_sde_vp():
    try:
        from diffusers import ScoreSdeVpScheduler
    except ImportError:  # moved to the deprecated sub-package in diffusers >= 0.2x
        from diffusers.schedulers.deprecated.scheduling_sde_vp import ScoreSdeVpScheduler

    def run(sde, score_fn, x_T, nfe, generator):
        if not hasattr(sde, "beta_min") or getattr(sde, "schedule", "linear") != "linear" or type(sde).__name__ != "VPSDE":
            raise ValueError("ScoreSdeVpScheduler needs the linear VP SDE")
        sched = ScoreSdeVpScheduler(num_train_timesteps=nfe, beta_min=sde.beta_min, beta_max=sde.beta_max, sampling_eps=sde.eps)
        sched.set_timesteps(nfe)
        x, x_mean = x_T, x_T
        B = x.shape[0]
        for t in sched.timesteps:
            tb = t.reshape(1).expand(B).to(x.device, x.dtype)
            std = _coeffs64(sde, t.double())[1].to(x)
            x, x_mean = sched.step_pred(-std * score_fn(x, tb), x, tb, generator=generator)
        return x_mean, None

    return run


def _score_sde_ve(corrector: bool):
    from diffusers import ScoreSdeVeScheduler

    def run(sde, score_fn, x_T, nfe, generator):
        if not hasattr(sde, "sigma_max"):
            raise ValueError("ScoreSdeVeScheduler needs the VE SDE")
        steps = nfe // 2 if corrector else nfe
        sched = ScoreSdeVeScheduler(num_train_timesteps=steps, snr=0.16, sigma_min=sde.sigma_min, sigma_max=sde.sigma_max, sampling_eps=sde.eps)
        sched.set_timesteps(steps, sde.eps)
        sched.set_sigmas(steps, sde.sigma_min, sde.sigma_max, sde.eps)
        x, x_mean = x_T, x_T
        B = x.shape[0]
        for t in sched.timesteps:
            tb = t.reshape(1).expand(B).to(x.device, x.dtype)
            if corrector:
                x = sched.step_correct(score_fn(x, tb), x, generator=generator).prev_sample
            out = sched.step_pred(score_fn(x, tb), t, x, generator=generator)
            x, x_mean = out.prev_sample, out.prev_sample_mean
        return x_mean, None

    return run


# ---- torchsde ----
def _torchsde_euler():
    import torchsde

    def run(sde, score_fn, x_T, nfe, generator):
        T, eps = sde.T, sde.eps
        B = x_T.shape[0]
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))

        class Reverse(torch.nn.Module):
            noise_type, sde_type = "diagonal", "ito"

            def f(self, tau, y):
                t = (T - tau).to(torch.float64).reshape(1).expand(B)
                return -sde.reverse_drift(y, t, score_fn(y, t.to(y.dtype)))

            def g(self, tau, y):
                t = (T - tau).to(torch.float64).reshape(1)
                return sde.diffusion(t).to(y.dtype).expand_as(y)

        dt = (T - eps) / nfe
        ts = torch.tensor([0.0, T - eps], dtype=x_T.dtype, device=x_T.device)
        bm = torchsde.BrownianInterval(t0=0.0, t1=T - eps, size=x_T.shape, dtype=x_T.dtype, device=x_T.device, entropy=seed)
        ys = torchsde.sdeint(Reverse(), x_T, ts, method="euler", dt=dt * (1 + 1e-6), bm=bm)
        return ys[-1], None

    return run


# ---- k-diffusion ----
def _load_k_sampling():
    from sde_gen.interop import import_k_diffusion

    return import_k_diffusion("sampling")


def _k_diffusion(fn_name: str, evals_per_step: int, stochastic: bool, **fn_kwargs):
    K = _load_k_sampling()
    fn = getattr(K, fn_name)

    def run(sde, score_fn, x_T, nfe, generator):
        steps = (nfe + 1) // 2 if evals_per_step == 2 else nfe
        a_e, s_e = _coeffs64(sde, sde.eps)
        a_T, s_T = _coeffs64(sde, sde.T)
        sigmas = K.get_sigmas_karras(steps, float(s_e / a_e), float(s_T / a_T), rho=7.0, device=x_T.device).to(x_T.dtype)
        B = x_T.shape[0]

        def denoiser(x_kd, sigma):
            t = _t_of_sigma(sde, sigma.reshape(-1)[:1]).expand(B).to(x_kd.device)
            a = _coeffs64(sde, t[:1])[0].to(x_kd)
            x = a * x_kd
            return x0_from_score(sde, x, t, score_fn(x, t.to(x.dtype)))

        extra = {}
        if stochastic:
            seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))
            g = torch.Generator(x_T.device).manual_seed(seed)
            extra["noise_sampler"] = lambda sigma, sigma_next: torch.randn(x_T.shape, generator=g, device=x_T.device, dtype=x_T.dtype)
        if fn_name == "sample_dpm_fast":  # its own grid from the budget: n evaluations
            x = fn(denoiser, x_T / a_T.to(x_T), float(s_e / a_e), float(s_T / a_T), nfe, disable=True, **extra, **fn_kwargs)
        else:
            x = fn(denoiser, x_T / a_T.to(x_T), sigmas, disable=True, **extra, **fn_kwargs)
        return x, None

    return run


# ---- scipy solve_ivp with numpy round trips ----
def _scipy_rk45():
    from scipy import integrate

    def run(sde, score_fn, x_T, nfe, generator, rtol=1e-5):
        shape, dev, dt = x_T.shape, x_T.device, x_T.dtype
        B = shape[0]

        def rhs(t, y):
            x = torch.from_numpy(y.reshape(shape)).to(dev, dt)
            tb = torch.full((B,), t, dtype=torch.float64, device=dev)
            d = sde.probability_flow_drift(x, tb, score_fn(x, tb.to(dt)))
            return d.cpu().numpy().astype(np.float64).reshape(-1)

        sol = integrate.solve_ivp(rhs, (sde.T, sde.eps), x_T.cpu().numpy().reshape(-1).astype(np.float64), rtol=rtol, atol=rtol, method="RK45")
        x = torch.from_numpy(sol.y[:, -1].reshape(shape)).to(dev, dt)
        t = torch.full((B,), sde.eps, dtype=torch.float64, device=dev)
        return x0_from_score(sde, x, t, score_fn(x, t.to(dt))), None

    return run


#: the third-order and few-step peers (issue 17), also used alone by bench_fewsteps.py
FEWSTEP_PEERS = [
    ("diffusers UniPCMultistepScheduler (order 3)", True, ("vp",), lambda: _diffusers_discrete("UniPCMultistepScheduler", solver_order=3, timestep_spacing="trailing")),
    ("diffusers DPMSolverMultistepScheduler (3M++)", True, ("vp",), lambda: _diffusers_discrete("DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=3, timestep_spacing="trailing")),
    ("k-diffusion sample_dpmpp_3m_sde (eta=0)", True, ("vp", "ve", "subvp"), lambda: _k_diffusion("sample_dpmpp_3m_sde", 1, True, eta=0.0)),
    ("k-diffusion sample_dpmpp_3m_sde", False, ("vp", "ve", "subvp"), lambda: _k_diffusion("sample_dpmpp_3m_sde", 1, True)),
    ("k-diffusion sample_dpm_fast", True, ("vp", "ve", "subvp"), lambda: _k_diffusion("sample_dpm_fast", 1, False)),
]
#: the peers of the few-step benchmark (names from `build_peers`)
FEWSTEP_PEER_NAMES = (
    "diffusers DPMSolverMultistepScheduler (2M++)", "diffusers DPMSolverMultistepScheduler (2M++, karras)",
    "diffusers UniPCMultistepScheduler", "k-diffusion sample_dpmpp_2m",
) + tuple(p[0] for p in FEWSTEP_PEERS)


def build_peers() -> List[Peer]:
    """Every peer, each either runnable or carrying the reason it is not."""
    specs = [
        ("diffusers DDIMScheduler (eta=0)", True, ("vp",), lambda: _diffusers_discrete("DDIMScheduler", set_alpha_to_one=True, clip_sample=False, timestep_spacing="trailing")),
        ("diffusers DPMSolverMultistepScheduler (2M++)", True, ("vp",), lambda: _diffusers_discrete("DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing")),
        ("diffusers DPMSolverMultistepScheduler (2M++, karras)", True, ("vp",), lambda: _diffusers_discrete("DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True)),
        ("diffusers UniPCMultistepScheduler", True, ("vp",), lambda: _diffusers_discrete("UniPCMultistepScheduler", timestep_spacing="trailing")),
        ("diffusers HeunDiscreteScheduler", True, ("vp",), lambda: _diffusers_discrete("HeunDiscreteScheduler", timestep_spacing="trailing")),
        ("diffusers ScoreSdeVpScheduler", False, ("vp",), _score_sde_vp),
        ("diffusers ScoreSdeVeScheduler (predictor)", False, ("ve",), lambda: _score_sde_ve(False)),
        ("diffusers ScoreSdeVeScheduler (PC)", False, ("ve",), lambda: _score_sde_ve(True)),
        ("torchsde sdeint (euler)", False, ("vp", "ve", "subvp"), _torchsde_euler),
        ("k-diffusion sample_euler", True, ("vp", "ve", "subvp"), lambda: _k_diffusion("sample_euler", 1, False)),
        ("k-diffusion sample_heun", True, ("vp", "ve", "subvp"), lambda: _k_diffusion("sample_heun", 2, False)),
        ("k-diffusion sample_lms", True, ("vp", "ve", "subvp"), lambda: _k_diffusion("sample_lms", 1, False)),
        ("k-diffusion sample_dpmpp_2m", True, ("vp", "ve", "subvp"), lambda: _k_diffusion("sample_dpmpp_2m", 1, False)),
        ("k-diffusion sample_euler_ancestral", False, ("vp", "ve", "subvp"), lambda: _k_diffusion("sample_euler_ancestral", 1, True)),
        ("k-diffusion sample_dpmpp_2m_sde", False, ("vp", "ve", "subvp"), lambda: _k_diffusion("sample_dpmpp_2m_sde", 1, True)),
    ]
    specs += FEWSTEP_PEERS
    peers = []
    for name, det, sdes, make in specs:
        try:
            peers.append(Peer(name, det, run=make(), sdes=sdes))
        except Exception as err:  # a missing or broken package is reported, never dropped
            peers.append(Peer(name, det, error=f"{type(err).__name__}: {err}", sdes=sdes))
    try:
        peers.append(Peer("scipy solve_ivp RK45 (numpy round trips)", True, run=_scipy_rk45(), budget_free=True, tolerances=[1e-2, 1e-3, 1e-5]))
    except Exception as err:
        peers.append(Peer("scipy solve_ivp RK45 (numpy round trips)", True, error=f"{type(err).__name__}: {err}"))
    return peers
