"""Shared fixtures: every SDE of the library (so a new SDE is tested automatically), at T = 1 and
at T = 2 with a non-default eps (so a dropped `/ T` is caught), devices, and the seed protocol of
the statistical tests (`--stat-seed`, see docs/testing.md)."""
import pytest
import torch

from sde_gen import SDES, VPSDE, EDMSDE


def all_sdes(**kwargs):
    """One instance of every registered SDE (defaults, updated by `kwargs`), plus the cosine VP schedule."""
    sdes = [cls(**kwargs) for cls in SDES.values()]
    sdes.append(VPSDE(schedule="cosine", **kwargs))
    return sdes


def sde_id(sde):
    name = type(sde).__name__ + (f"-{sde.schedule}" if hasattr(sde, "schedule") else "")
    return name if sde.T == 1.0 else f"{name}-T{sde.T:g}-eps{sde.eps:g}"


def grid_for(sde):
    """Sampler options the convergence tests add for `sde`: none, except a log-SNR grid for the EDM SDE.

    Its sigma(t) = t on [0.002, 80] makes a uniform t-grid spend all but a few steps at sigma > 1, so at
    these tests' budgets every solver is pre-asymptotic there (Karras et al. 2022 use their rho = 7 grid).
    """
    return {"grid": "karras"} if isinstance(sde, EDMSDE) else {}


ALL_SDES = all_sdes()
SDE_IDS = [sde_id(s) for s in ALL_SDES]
#: every SDE at T = 1 (defaults) and at T = 2 with eps = 1e-2 (neither T nor eps at its default)
ALL_SDES_T = ALL_SDES + all_sdes(T=2.0, eps=1e-2)
SDE_T_IDS = [sde_id(s) for s in ALL_SDES_T]

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.fixture(params=ALL_SDES, ids=SDE_IDS)
def sde(request):
    return request.param


def pytest_addoption(parser):
    parser.addoption(
        "--stat-seed", type=int, default=0,
        help="seed offset for the tests marked `statistical` (0: each test's own seeds); "
             "`make test-seeds` runs them under several",
    )


@pytest.fixture
def stat_seed(request):
    """`stat_seed(own)` -> the seed a statistical test uses in place of its own seed `own`.

    With `--stat-seed 0` (the default) it is `own`, so the default suite is reproducible; with
    `--stat-seed N` every seed of every statistical test moves to a fresh stream, so a bound tuned to
    one lucky seed fails under `make test-seeds`.
    """
    offset = request.config.getoption("--stat-seed")
    if offset < 0:
        raise pytest.UsageError(f"--stat-seed must be >= 0; got {offset}")

    def seed(own: int) -> int:
        return own if offset == 0 else own + 7_919 * offset

    return seed


@pytest.fixture
def hydra_full_errors(monkeypatch):
    """Hydra apps called in-process re-raise the app's exception instead of printing it and exiting
    (a bad-input test may unset HYDRA_FULL_ERROR itself); the global Hydra state is cleared around
    the test, so each `main()` call composes afresh."""
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()
