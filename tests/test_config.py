"""Configs compose, instantiate, and reject bad values at start-up with the field's name."""
import pathlib

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from sde_gen.config import ConfigError, instantiate, register_configs, resolve_device
from sde_gen.config_apps import EvalConf, SampleAppConf
from sde_gen.discrete import DiscreteProcess, DiscreteSampler
from sde_gen.samplers import Sampler
from sde_gen.sdes import SDE

CONF = pathlib.Path(__file__).resolve().parents[1] / "sde_gen" / "conf"


def _group_options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def hydra_ctx():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        yield


# the sde and sampler groups also hold discrete diffusion's processes and samplers (issue 16)
@pytest.mark.parametrize("group, base", [("sde", (SDE, DiscreteProcess)), ("sampler", (Sampler, DiscreteSampler))])
def test_every_group_option_composes_and_instantiates(hydra_ctx, group, base):
    for option in _group_options(group):
        cfg = compose(config_name=None, overrides=[f"+{group}={option}"])
        obj = instantiate(cfg[group], group)
        assert isinstance(obj, base), option


@pytest.mark.parametrize(
    "override, field",
    [("sde.beta_mn=1", "beta_mn"), ("sde.beta_min=abc", "beta_min"), ("sampler.nfee=3", "nfee")],
)
def test_misspelt_key_and_wrong_type_fail_at_composition(hydra_ctx, override, field):
    with pytest.raises(ConfigCompositionException) as info:
        compose(config_name=None, overrides=["+sde=vp", "+sampler=euler_maruyama", override])
    text = str(info.value) + str(info.value.__cause__)
    assert field in text


@pytest.mark.parametrize(
    "overrides, path, field",
    [
        (["+sde=vp", "sde.beta_min=-1"], "sde", "beta_min"),
        (["+sde=ve", "sde.sigma_min=100"], "sde", "sigma_min"),
        (["+sde=vp", "sde.eps=2"], "sde", "eps"),
        (["+sampler=euler_maruyama", "sampler.nfe=0"], "sampler", "nfe"),
        (["+sampler=euler_maruyama", "sampler.grid=cubic"], "sampler", "grid"),
    ],
)
def test_impossible_values_fail_at_instantiation_naming_the_field(hydra_ctx, overrides, path, field):
    cfg = compose(config_name=None, overrides=overrides)
    with pytest.raises(ConfigError, match=rf"{path}: .*{field}"):
        instantiate(cfg[path], path)


def test_device_option(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    # "auto" is CUDA exactly when CUDA is available: checked both ways by faking availability (a
    # resolved device is only a name, nothing is allocated on it)
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for available, expected in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        assert resolve_device("auto").type == expected, available
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="device"):
        resolve_device("gpu0")


# ---- the apps' schemas (sde_gen.config_apps): both apps refuse the same bad source options alike ----
@pytest.mark.parametrize("schema", [EvalConf, SampleAppConf])
@pytest.mark.parametrize("kwargs,field,allowed", [
    ({"source": "file"}, "source", "['oracle', 'checkpoint']"),
    ({"source": "oracle", "problem": "ring3d"}, "problem", "ring2d"),
    ({"source": "checkpoint", "checkpoint": None}, "checkpoint", "file path"),
    ({"source": "checkpoint", "checkpoint": ""}, "checkpoint", "file path"),
    ({"dtype": "float16"}, "dtype", "['float32', 'float64']"),
    ({"trusted_targets": [".rel.Path"]}, "trusted_targets", ""),
])
def test_app_schemas_name_the_field_and_its_allowed_values(schema, kwargs, field, allowed):
    with pytest.raises(ValueError) as err:
        schema(**kwargs)
    message = str(err.value)
    assert message.startswith(field) and allowed in message and "\n" not in message, message


@pytest.mark.parametrize("schema", [EvalConf, SampleAppConf])
def test_app_schemas_accept_both_sources(schema):
    assert schema(source="oracle", problem="ring2d").problem == "ring2d"
    assert schema(source="checkpoint", checkpoint="run/ckpt.pt").checkpoint == "run/ckpt.pt"
