"""`sde_gen.sample` and `sde_gen.train` are functions and also `python -m` entry modules.

Importing such a module (`import sde_gen.sample`) makes Python set the package attribute to the
module, shadowing the function; `keep_callable` makes the module itself call the function, so
`sde_gen.sample(...)` works however it was imported.
"""
import sys
import types
from typing import Callable


def keep_callable(module_name: str, fn: Callable) -> None:
    """Make the module `module_name` callable as `fn`."""

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return fn(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule
