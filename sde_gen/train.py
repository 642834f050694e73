"""`python -m sde_gen.train` runs the app `sde_gen.apps.train` (sde-gen-train); importing this
module keeps `sde_gen.train` callable as the function `sde_gen.training.train`."""
if __name__ == "__main__":
    from sde_gen.apps.train import main

    raise SystemExit(main())
from sde_gen._shim import keep_callable
from sde_gen.training import train

keep_callable(__name__, train)
