"""Forward SDEs with affine (Gaussian) marginals (Song et al. 2021, eqs. 5, 9, 11, 12;
Karras et al. 2022, Table 1).

`SDE` (base.py) is the abstract SDE with every derived quantity written once; vp.py holds the
VP (linear, cosine) and sub-VP SDEs, ve.py the VE SDE, edm.py the EDM SDE sigma(t) = t. `SDES` is
the name -> class registry.
"""
from .._validation import check_choice
from .base import SDE
from .edm import EDMSDE
from .ve import VESDE
from .vp import SubVPSDE, VPSDE

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "EDMSDE", "SDES", "build_sde"]

#: name -> class, for string look-up (Hydra configs use `_target_`).
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "edm": EDMSDE}


def build_sde(name: str, **kwargs) -> SDE:
    """Construct an SDE by name (`"vp"`, `"subvp"`, `"ve"` or `"edm"`) with keyword arguments."""
    check_choice("sde", name, SDES)
    return SDES[name](**kwargs)
