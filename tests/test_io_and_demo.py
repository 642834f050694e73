"""Atomic writes never leave a truncated file; the README's main job runs and checks itself."""
import os

import pytest

from sde_gen import demo
from sde_gen.io import atomic_path, atomic_write_text


def test_atomic_write_keeps_old_file_when_writer_crashes(tmp_path):
    path = tmp_path / "metrics.txt"
    atomic_write_text(str(path), "good")
    with pytest.raises(RuntimeError):
        with atomic_path(str(path)) as tmp:
            with open(tmp, "w") as fh:
                fh.write("partial")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "good"
    assert os.listdir(tmp_path) == ["metrics.txt"]  # no temporary left behind


def test_demo_checks_marginals_and_saves_plot(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path), "--n", "4000"]) == 0
    assert (tmp_path / "forward_sdes.png").stat().st_size > 10_000
    assert "agree with the oracle" in capsys.readouterr().out
