"""Atomic writes never leave a truncated file and give files the usual permissions; the
forward-process demo runs and checks itself."""
import os
import stat

import pytest

from sde_gen.apps import demo
from sde_gen.io import atomic_path, atomic_save_figure, atomic_write_text


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


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o000])
def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path, umask):
    """Every writer of sde_gen.io creates files like `open(path, "w")` does: mode 0666 & ~umask
    (a temporary file from `tempfile.mkstemp` would stay 0600 whatever the umask)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    old = os.umask(umask)
    try:
        with open(tmp_path / "reference.txt", "w") as fh:
            fh.write("x")
        atomic_write_text(str(tmp_path / "text.txt"), "x")
        atomic_write_text(str(tmp_path / "text.txt"), "replaced")  # replacing keeps the rule
        with atomic_path(str(tmp_path / "raw.bin")) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"x")
        fig = plt.figure()
        atomic_save_figure(fig, str(tmp_path / "fig.png"))
        plt.close(fig)
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {name: expected for name in ("reference.txt", "text.txt", "raw.bin", "fig.png")}, (oct(expected), modes)
