"""Re-execute notebooks in full mode and save them with their outputs (atomically).

Usage: python notebooks/execute.py [NOTEBOOK ...]   (default: every notebook in this folder)
"""
import os
import pathlib
import sys

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from sde_gen.io import atomic_path  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def main(paths):
    os.environ.pop("SDE_GEN_NOTEBOOK_FAST", None)
    for path in paths or sorted(HERE.glob("*.ipynb")):
        path = pathlib.Path(path)
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
        with atomic_path(str(path)) as tmp:
            nbformat.write(nb, tmp)
        print(f"executed {path.name}")


if __name__ == "__main__":
    main(sys.argv[1:])
