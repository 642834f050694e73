"""The README's Python examples run as written (in order, in one namespace), so they cannot go
stale. The checkpoint example gets `run_dir` from a real three-step training run."""
import pathlib
import re

from hydra import compose, initialize_config_dir

from sde_gen.config import register_configs
from sde_gen.training import train

from .test_train import CONF, TINY

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "README lost its library examples"
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=[*TINY, "train.steps=3"])
    train(cfg, str(tmp_path))
    namespace = {"run_dir": str(tmp_path)}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["x"].shape == (1000, 2)
