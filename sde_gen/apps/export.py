"""The export command `sde-gen-export RUN_DIR`: a training run's weights as safetensors, its config as YAML.

`sde-gen-export RUN_DIR [--out DIR] [--raw]` runs `sde_gen.checkpoint.export_trained`.

Writes `model.safetensors` (the EMA weights of the newest checkpoint; `--raw` for the training
weights) and `model.yaml` (the resolved run config with step, event shape and data_std) into
`--out` (default: RUN_DIR/export). `sde_gen.load_trained(DIR)` loads the folder back. Bad input (no
checkpoint, an unreadable or refused one, safetensors missing) ends in one `sde-gen-export: error:`
line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ..checkpoint import export_trained
from ._hydra import one_line
from ..trust import CheckpointError

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point `sde-gen-export`; returns 0 on success (exit code 2 on bad input)."""
    prog = "sde-gen-export"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a training run directory (its newest checkpoint) or a ckpt_*.pt file")
    parser.add_argument("--out", default=None, help="the export folder (default: RUN/export)")
    parser.add_argument("--raw", action="store_true", help="export the raw training weights instead of the EMA weights")
    args = parser.parse_args(argv)
    try:
        out = export_trained(args.run, args.out, ema=not args.raw)
    except (CheckpointError, ImportError, OSError) as err:
        parser.exit(2, f"{prog}: error: {one_line(err)}\n")
    print(f"weights: {out['weights']}\nconfig: {out['config']}")
    return 0
