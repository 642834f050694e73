"""The public API: `sde_gen.__all__` and the README's API table agree, and `sde_gen.sample` /
`sde_gen.train` stay the functions however their `python -m` modules were imported."""
import pathlib
import re
import subprocess
import sys

import sde_gen

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _api_table_names():
    text = README.read_text()
    section = text.split("## Public API", 1)[1].split("\n## ", 1)[0]
    first_cells = [row.split("|")[1] for row in section.splitlines() if row.startswith("| `")]
    return {name for cell in first_cells for name in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", cell)}


def test_readme_api_table_lists_exactly_the_public_names():
    documented = _api_table_names()
    assert documented == set(sde_gen.__all__), (
        f"in __all__ but not in the README table: {sorted(set(sde_gen.__all__) - documented)}; "
        f"in the table but not in __all__: {sorted(documented - set(sde_gen.__all__))}"
    )
    for name in sde_gen.__all__:
        assert hasattr(sde_gen, name), name


def test_sample_and_train_stay_functions_after_importing_their_entry_modules():
    # a fresh interpreter: importing the `python -m` modules must not shadow the functions
    code = (
        "import torch, sde_gen, sde_gen.sample, sde_gen.train\n"
        "from sde_gen import VPSDE, make_preset\n"
        "import sde_gen.training, sde_gen.samplers\n"
        "sde, ring = VPSDE(), make_preset('ring2d')\n"
        "res = sde_gen.sample(sde, ring.score_fn(sde), (8, 2), sampler='ddim', nfe=4,"
        " generator=torch.Generator().manual_seed(0))\n"
        "ref = sde_gen.samplers.sample(sde, ring.score_fn(sde), (8, 2), sampler='ddim', nfe=4,"
        " generator=torch.Generator().manual_seed(0))\n"
        "assert torch.equal(res.samples, ref.samples) and res.nfe == 4\n"
        "assert callable(sde_gen.train)\n"
        "from sde_gen import sample, train\n"
        "assert callable(sample) and callable(train)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
