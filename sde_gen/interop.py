"""Other libraries' models as sde_gen scores, and sde_gen scores as their models.

Everything here is one change of variables of the Gaussian perturbation x_t = a(t) x_0 + s(t) z
(Song et al. 2021, eq. 29 / App. B), with the half log-SNR lambda = log(a / s) as the common clock:

* **DDPM noise predictors** (Ho et al. 2020; diffusers' `UNet2DModel` and any `model(x, timesteps)`
  trained on a discrete chain with cumulative products alpha_bar_k, k = 0..N-1). Step k has the
  half log-SNR lambda_k = 1/2 log(alpha_bar_k / (1 - alpha_bar_k)). A continuous time t of any
  affine SDE is mapped to the fractional timestep tau(t) at which the chain has the SAME noise level:
  lambda(tau) = lambda(t), with lambda(tau) interpolated linearly between the integer steps
  (`DDPMTimesteps`). At t_k = lambda^{-1}(lambda_k) the map gives tau = k exactly (to rounding), so
  the model sees inputs at the noise level it was trained on. Outside the chain's range
  [lambda_{N-1}, lambda_0] tau is clamped to 0 or N - 1 (the model is not defined beyond). The
  model's input lives on the VP scale: x_vp = x / sqrt(a^2 + s^2) = a_vp x_0 + s_vp z with
  a_vp^2 + s_vp^2 = 1 (identity for a VP SDE), and its noise prediction gives the score

      grad log p_t(x) = -eps_hat / s(t)                          (Song et al. 2021, App. H)

  (`EpsModelScore`; "sample" and "v_prediction" outputs are converted to eps_hat first:
  eps = (x_vp - a_vp x0_hat) / s_vp, eps = a_vp v + s_vp x_vp, Salimans & Ho 2022).
  For the linear DDPM chain beta_k = beta_start + k / (N - 1) (beta_end - beta_start) the matching
  continuous SDE is the linear `VPSDE` with beta_min = N beta_start, beta_max = N beta_end (the
  continuous limit, Song et al. 2021, App. B); `ddpm_vp_sde` builds it with its eps at step 0.
* **k-diffusion denoisers** (Karras et al. 2022): D(x~; sigma) ~ E[x_0 | x~] in the scaled variable
  x~ = x / a = x_0 + sigma z, sigma = s / a. From a score (Tweedie): D = (x + s^2 score(x, t)) / a
  with x = a x~ and t = lambda^{-1}(-log sigma) (`KDiffusionDenoiser`); back to a score:
  score(x, t) = (D(x / a; s / a) - x / a) / (a sigma^2) (`DenoiserScore`).

The optional packages (diffusers, k-diffusion) are imported only where a function needs them.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
import types
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from ._validation import check_choice
from .sdes import SDE, VPSDE
from .utils import append_dims

__all__ = ["PREDICTION_TYPES", "DDPMTimesteps", "EpsModelScore", "ddpm_alphas_cumprod", "ddpm_vp_sde",
           "load_diffusers_pipeline", "KDiffusionDenoiser", "DenoiserScore", "import_k_diffusion"]

#: what a DDPM-style model predicts (diffusers' `prediction_type`)
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
#: diffusers' `beta_schedule` values that have a continuous `VPSDE` counterpart
DDPM_SCHEDULES = ("linear", "squaredcos_cap_v2")


def _need(package: str, extra: str):
    """Import an optional package or fail with one line saying how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise ImportError(f"{package} is needed here and is not installed: pip install 'sde_gen[{extra}]' ({err})",
                          name=package) from err


def _half_log_snr_of_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.log(alpha_bar) - torch.log1p(-alpha_bar))


def _check_alphas_cumprod(alphas_cumprod) -> torch.Tensor:
    abar = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
    if abar.ndim != 1 or abar.numel() < 2:
        raise ValueError(f"alphas_cumprod must be a 1-D table with at least 2 steps; got shape {tuple(abar.shape)}")
    if not bool(((abar > 0) & (abar < 1)).all()) or not bool((abar[1:] < abar[:-1]).all()):
        raise ValueError("alphas_cumprod must be strictly decreasing inside (0, 1) (the DDPM chain's cumulative "
                         "products alpha_bar_k)")
    return abar


class DDPMTimesteps(nn.Module):
    """The map between an SDE's continuous time t and a DDPM chain's fractional timestep tau.

    tau(t) solves lambda_chain(tau) = lambda_sde(t) (module docstring), with lambda_chain linear
    between integer steps and tau clamped to [0, N - 1]; in float64.

    Args:
        alphas_cumprod: the chain's alpha_bar_k, shape (N,), strictly decreasing in (0, 1).
        sde: the continuous SDE whose time t is mapped.
    """

    def __init__(self, alphas_cumprod, sde: SDE):
        super().__init__()
        abar = _check_alphas_cumprod(alphas_cumprod)
        self.sde = sde
        self.register_buffer("half_log_snr", _half_log_snr_of_alpha_bar(abar), persistent=False)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.half_log_snr.numel())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) -> tau: (B,) float64 in [0, N - 1]."""
        table = self.half_log_snr.to(t.device)  # decreasing in k
        lam = self.sde.half_log_snr(t.to(torch.float64)).clamp(table[-1], table[0])
        k = torch.searchsorted(-table, -lam).sub(1).clamp(0, table.numel() - 2)
        lo, hi = table[k], table[k + 1]
        return k.to(torch.float64) + ((lo - lam) / (lo - hi)).clamp(0.0, 1.0)

    def times(self) -> torch.Tensor:
        """t_k = lambda_sde^{-1}(lambda_k), the continuous time of each integer step: (N,) float64."""
        return self.sde.time_at_half_log_snr(self.half_log_snr)


class EpsModelScore(nn.Module):
    """A DDPM-style model on discrete timesteps as a score function of any affine SDE.

    `score(x, t, y=None) = -eps_hat(x_vp, tau(t)) / s(t)` with x_vp = x / sqrt(a^2 + s^2) and tau the
    noise-level-matched timestep (module docstring).

    Args:
        model: `model(x_vp, tau)` (or `model(x_vp, tau, class_labels=y)` when labels are given)
            returning a tensor like x, or an object with `.sample` (diffusers' `UNet2DModel`);
            tau is a (B,) float tensor of fractional timesteps.
        alphas_cumprod: the chain the model was trained on, shape (N,).
        sde: the SDE whose score is returned.
        prediction_type: "epsilon", "sample" or "v_prediction".
    """

    def __init__(self, model: Callable, alphas_cumprod, sde: SDE, prediction_type: str = "epsilon"):
        super().__init__()
        self.model = model
        self.sde = sde
        self.timesteps = DDPMTimesteps(alphas_cumprod, sde)
        self.prediction_type = check_choice("prediction_type", prediction_type, PREDICTION_TYPES)

    def eps(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The model's noise prediction eps_hat at (x, t), shape like x."""
        a, s = self.sde.marginal_coeffs(t)
        a, s = append_dims(a.to(x.dtype), x.ndim), append_dims(s.to(x.dtype), x.ndim)
        norm = torch.sqrt(a ** 2 + s ** 2)
        a_vp, s_vp = a / norm, s / norm
        x_vp = x / norm
        tau = self.timesteps(t).to(x.dtype)
        out = self.model(x_vp, tau) if y is None else self.model(x_vp, tau, class_labels=y)
        out = out if torch.is_tensor(out) else out.sample
        if self.prediction_type == "sample":
            return (x_vp - a_vp * out) / s_vp
        if self.prediction_type == "v_prediction":
            return a_vp * out + s_vp * x_vp
        return out

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, *event), t: (B,) -> score (B, *event)."""
        _, s = self.sde.marginal_coeffs(t)
        return -self.eps(x, t, y) / append_dims(s.to(x.dtype), x.ndim)


def ddpm_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                        beta_schedule: str = "linear", trained_betas=None, max_beta: float = 0.999) -> torch.Tensor:
    """alpha_bar_k = prod_{i<=k} (1 - beta_i) of a DDPM chain in float64 (diffusers' scheduler options).

    "linear": beta_k = beta_start + k / (N - 1) (beta_end - beta_start) (Ho et al. 2020);
    "squaredcos_cap_v2": beta_k = min(1 - f((k + 1) / N) / f(k / N), max_beta),
    f(u) = cos^2(pi/2 (u + 0.008) / 1.008) (Nichol & Dhariwal 2021, eq. 17); `trained_betas` (a
    sequence) overrides both.
    """
    N = int(num_train_timesteps)
    if trained_betas is not None:
        betas = torch.as_tensor(list(trained_betas), dtype=torch.float64)
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, N, dtype=torch.float64)
    elif beta_schedule == "squaredcos_cap_v2":
        u = torch.arange(N + 1, dtype=torch.float64) / N
        f = torch.cos(0.5 * math.pi * (u + 0.008) / 1.008) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp_max(max_beta)
    else:
        raise ValueError(f"beta_schedule must be one of {list(DDPM_SCHEDULES)} (or give trained_betas); got {beta_schedule!r}")
    return torch.exp(torch.cumsum(torch.log1p(-betas), 0))


def ddpm_vp_sde(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                beta_schedule: str = "linear", max_beta: float = 0.999, **_ignored) -> VPSDE:
    """The continuous `VPSDE` of a DDPM chain, with eps = the time of the chain's step 0.

    "linear": beta_min = N beta_start, beta_max = N beta_end (the chain's continuous limit, T = 1).
    "squaredcos_cap_v2": the cosine schedule (s = 0.008) with the cap beta_max = -N log(1 - max_beta),
    the continuous rate of the chain's clipped last steps. Other keyword arguments (the rest of a
    diffusers scheduler config) are ignored.

    Raises:
        ValueError naming `beta_schedule` for a schedule without a continuous counterpart.
    """
    N = int(num_train_timesteps)
    abar0 = ddpm_alphas_cumprod(N, beta_start, beta_end, beta_schedule, None, max_beta)[:1]
    if beta_schedule == "linear":
        sde = VPSDE(beta_min=N * beta_start, beta_max=N * beta_end)
    elif beta_schedule == "squaredcos_cap_v2":
        sde = VPSDE(schedule="cosine", cosine_s=0.008, beta_max=-N * math.log1p(-max_beta))
    else:
        raise ValueError(f"beta_schedule must be one of {list(DDPM_SCHEDULES)}; got {beta_schedule!r}")
    eps = float(sde.time_at_half_log_snr(_half_log_snr_of_alpha_bar(abar0))[0])
    return type(sde)(**{**_vp_kwargs(sde), "eps": eps})


def _vp_kwargs(sde: VPSDE) -> dict:
    return dict(beta_min=sde.beta_min, beta_max=sde.beta_max, schedule=sde.schedule, cosine_s=sde.cosine_s, T=sde.T)


def load_diffusers_pipeline(path: str, device=None, dtype: torch.dtype = torch.float32) -> Tuple[VPSDE, EpsModelScore]:
    """A DDPM-style diffusers pipeline folder on local disk as `(sde, score_fn)`.

    Reads `<path>/unet` (a `UNet2DModel` saved with `save_pretrained`) and
    `<path>/scheduler/scheduler_config.json`; nothing is downloaded. The SDE is `ddpm_vp_sde` of the
    scheduler's schedule, the score `EpsModelScore` of the UNet on the scheduler's alpha_bar table
    (so sde_gen's samplers and likelihoods run on the pipeline's model).

    Args:
        path: the pipeline folder (what `DDPMPipeline.save_pretrained(path)` writes).
        device: where to put the model (None: CPU).
        dtype: the model's dtype.

    Raises:
        ValueError naming the file or the scheduler option that is missing or not supported.
        ImportError when diffusers is not installed.
    """
    diffusers = _need("diffusers", "interop")
    scheduler_file = os.path.join(path, "scheduler", "scheduler_config.json")
    if not os.path.isdir(os.path.join(path, "unet")) or not os.path.isfile(scheduler_file):
        raise ValueError(f"path: {path!r} is not a diffusers pipeline folder (needs unet/ and scheduler/scheduler_config.json)")
    with open(scheduler_file) as fh:
        config = json.load(fh)
    options = {k: config[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
               if config.get(k) is not None}
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("scheduler rescale_betas_zero_snr=true: alpha_bar_{N-1} = 0 has no finite half log-SNR; "
                         "allowed: false")
    if "trained_betas" in options:
        raise ValueError("scheduler trained_betas: no continuous VPSDE is known for a table of betas; "
                         f"allowed: beta_schedule in {list(DDPM_SCHEDULES)}")
    prediction_type = config.get("prediction_type", "epsilon")
    sde = ddpm_vp_sde(**options)
    alphas_cumprod = ddpm_alphas_cumprod(**options)
    unet = diffusers.UNet2DModel.from_pretrained(path, subfolder="unet", local_files_only=True)
    unet.to(device=device or "cpu", dtype=dtype).eval().requires_grad_(False)
    score = EpsModelScore(unet, alphas_cumprod, sde, prediction_type=prediction_type).to(device or "cpu")
    return sde, score


class KDiffusionDenoiser(nn.Module):
    """An sde_gen score as a k-diffusion denoiser `D(x~, sigma, **kwargs)` (Karras et al. 2022).

    D(x~; sigma) = x0_hat = (x + s^2 score(x, t)) / a with x = a x~, t = lambda^{-1}(-log sigma)
    (Tweedie's formula; any affine SDE). At sigma = 0 the denoiser is the identity.

    Args:
        score_fn: `score_fn(x, t, **kwargs)`, e.g. a `ScoreModel` or an oracle's `score_fn(sde)`.
        sde: the SDE `score_fn` belongs to.
    """

    def __init__(self, score_fn: Callable, sde: SDE):
        super().__init__()
        self.score_fn = score_fn
        self.sde = sde

    @property
    def sigma_min(self) -> float:
        """sigma at the SDE's eps."""
        return self._sigma(self.sde.eps)

    @property
    def sigma_max(self) -> float:
        """sigma at the SDE's T."""
        return self._sigma(self.sde.T)

    def _sigma(self, t: float) -> float:
        a, s = self.sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64))
        return float(s[0] / a[0])

    def forward(self, x_tilde: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        """x~: (B, *event), sigma: (B,) (or a scalar) -> x0_hat (B, *event)."""
        sigma = torch.as_tensor(sigma, device=x_tilde.device).to(torch.float64).reshape(-1).expand(x_tilde.shape[0])
        positive = sigma > 0
        # sigma = 0 is the data itself; evaluate the score at T there (finite) and discard it
        t = torch.where(positive, self.sde.time_at_half_log_snr(-torch.log(sigma)), torch.full_like(sigma, self.sde.T))
        a, s = self.sde.marginal_coeffs(t)
        a, s = append_dims(a.to(x_tilde.dtype), x_tilde.ndim), append_dims(s.to(x_tilde.dtype), x_tilde.ndim)
        x = a * x_tilde
        x0 = (x + s ** 2 * self.score_fn(x, t.to(x_tilde.dtype), **kwargs)) / a
        return torch.where(append_dims(positive, x_tilde.ndim), x0, x_tilde)


class DenoiserScore(nn.Module):
    """A k-diffusion denoiser `D(x~, sigma, **kwargs)` as the score of an affine SDE.

    score(x, t) = (D(x / a, s / a) - x / a) / (a sigma^2), sigma = s(t) / a(t) (Tweedie's formula inverted).

    Args:
        denoiser: `denoiser(x~, sigma, **kwargs)` with sigma of shape (B,), returning E[x_0 | x~],
            e.g. a k-diffusion `Denoiser` / `DiscreteEpsDDPMDenoiser` or `KDiffusionDenoiser`.
        sde: the SDE whose time t the score takes.
    """

    def __init__(self, denoiser: Callable, sde: SDE):
        super().__init__()
        self.denoiser = denoiser
        self.sde = sde

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """x: (B, *event), t: (B,) -> score (B, *event)."""
        a, s = self.sde.marginal_coeffs(t)
        sigma = (s / a).to(x.dtype)
        a, sig = append_dims(a.to(x.dtype), x.ndim), append_dims(sigma, x.ndim)
        x_tilde = x / a
        return (self.denoiser(x_tilde, sigma, **kwargs) - x_tilde) / (a * sig ** 2)


def import_k_diffusion(module: str = "sampling") -> types.ModuleType:
    """A module of the installed k-diffusion package: "sampling" (samplers, `get_sigmas_*`) or
    "external" (its model wrappers, e.g. `DiscreteEpsDDPMDenoiser`).

    `import k_diffusion` needs torchvision, scikit-image, CLIP and more (its package `__init__`
    imports every submodule); these two modules need only torch, scipy, torchdiffeq, torchsde and
    tqdm. When the full import fails for a missing dependency, the two files are loaded on their own
    with a stand-in for the one helper they take from `k_diffusion.utils` (`append_dims`). Install
    with `pip install --no-deps k-diffusion torchsde` for this path.

    Raises:
        ValueError naming `module` and the allowed values; ImportError when k-diffusion is missing.
    """
    check_choice("module", module, ("sampling", "external"))
    try:
        return importlib.import_module(f"k_diffusion.{module}")
    except ImportError as err:  # a dependency of the package's other modules is missing
        full_import_error = err
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed: pip install --no-deps k-diffusion torchsde",
                          name="k_diffusion") from full_import_error
    name = "_sde_gen_k_diffusion"
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = list(spec.submodule_search_locations)
        utils = types.ModuleType(f"{name}.utils")
        utils.append_dims = lambda x, target_dims: x[(...,) + (None,) * (target_dims - x.ndim)]
        pkg.utils = utils
        sys.modules[name], sys.modules[f"{name}.utils"] = pkg, utils
    for part in ("sampling", "external") if module == "external" else ("sampling",):
        full = f"{name}.{part}"
        if full not in sys.modules:
            file = os.path.join(sys.modules[name].__path__[0], f"{part}.py")
            mspec = importlib.util.spec_from_file_location(full, file)
            mod = importlib.util.module_from_spec(mspec)
            sys.modules[full] = mod
            try:
                mspec.loader.exec_module(mod)
            except Exception:
                del sys.modules[full]
                raise
            setattr(sys.modules[name], part, mod)
    return sys.modules[f"{name}.{module}"]
