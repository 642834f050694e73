"""`python -m sde_gen.sample` runs the app `sde_gen.apps.sample` (sde-gen-sample); importing this
module keeps `sde_gen.sample` callable as the function `sde_gen.samplers.sample`."""
if __name__ == "__main__":
    from sde_gen.apps.sample import main

    raise SystemExit(main())
from sde_gen._shim import keep_callable
from sde_gen.samplers import sample

keep_callable(__name__, sample)
