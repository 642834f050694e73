"""Helpers of the tests written to kill mutants (docs/testing.md, "Mutation testing").

`foreign_default_device()` makes the meta device the default for tensor factories, so a CPU-only
machine can check the house rule "tensors follow the inputs; nothing defaults to a device": a
tensor created without `device=` inside the library lands on the meta device, and the first
operation mixing it with the CPU inputs raises (or the result comes back on the wrong device).
"""
import contextlib

import torch


@contextlib.contextmanager
def foreign_default_device():
    """Run the body with `meta` as the default device of tensor factories."""
    with torch.device("meta"):
        yield
