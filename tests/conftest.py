"""Shared fixtures: every SDE of the library (so a new SDE is tested automatically) and devices."""
import pytest
import torch

from sde_gen import SDES, VPSDE


def all_sdes():
    """One instance of every registered SDE at its defaults, plus the cosine VP schedule."""
    sdes = [cls() for cls in SDES.values()]
    sdes.append(VPSDE(schedule="cosine"))
    return sdes


def sde_id(sde):
    return type(sde).__name__ + (f"-{sde.schedule}" if hasattr(sde, "schedule") else "")


ALL_SDES = all_sdes()
SDE_IDS = [sde_id(s) for s in ALL_SDES]

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.fixture(params=ALL_SDES, ids=SDE_IDS)
def sde(request):
    return request.param
