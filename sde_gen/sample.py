"""`python -m sde_gen.sample` runs the app `sde_gen.apps.sample` (sde-gen-sample).

`sde_gen.sample` is also the function `sde_gen.samplers.sample`: importing this module keeps it
callable, so `import sde_gen.sample` cannot shadow the function.
"""
import sys
import types

from sde_gen.samplers import sample as _sample


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return _sample(*args, **kwargs)


if __name__ == "__main__":
    from sde_gen.apps.sample import main

    raise SystemExit(main())
sys.modules[__name__].__class__ = _CallableModule
