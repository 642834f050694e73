"""`sde-gen-train`: train a score network with the config `sde_gen/conf/config.yaml`.

Orchestration only: `sde_gen.training.train` does the work; this prints its summary.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from omegaconf import DictConfig

from ..training import train
from ._hydra import hydra_app

__all__ = ["main"]


def _task(cfg: DictConfig, run_dir: str, choices: Dict[str, str]):
    out = train(cfg, run_dir)
    final = out["final"]
    summary = {k: v for k, v in final.items() if "@" not in k}
    print(f"trained {out['step']} steps in {out['wall_s']:.1f} s; outputs in {run_dir}")
    print("final evaluation: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    return final.get("sw2")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point `sde-gen-train`; `argv` (overrides) for in-process use."""
    hydra_app("config", _task, argv)


if __name__ == "__main__":
    main()
