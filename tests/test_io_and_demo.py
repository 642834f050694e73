"""Atomic writes never leave a truncated file and give files the usual permissions; the
forward-process demo runs and checks itself."""
import os
import stat

import pytest
import torch

from sde_gen.apps import demo
from sde_gen.io import atomic_path, atomic_save_figure, atomic_write_text
from sde_gen.plots import GRID_GAP, image_grid, save_picture


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


# ---- the one image grid (sde_gen.plots.image_grid) and the pictures built on it ----
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("per_image_range", [False, True])
def test_image_grid_places_every_image_in_its_cell(channels, per_image_range):
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(5, channels, 4, 6, generator=g, dtype=torch.float64)  # leaves [-1, 1] on purpose
    grid = image_grid(x, per_image_range=per_image_range)
    assert grid.dtype == torch.float32 and grid.shape[:2] == (2 * 5, 3 * 7)  # rows x cols = 2 x 3, 1-pixel gaps
    cells = grid if channels > 1 else grid[..., None]
    for i in range(5):
        r, c = divmod(i, 3)
        cell = cells[r * 5 : r * 5 + 4, c * 7 : c * 7 + 6].permute(2, 0, 1).double()
        if per_image_range:  # each image stretched over its own [min, max]
            want = (x[i] - x[i].min()) / (x[i].max() - x[i].min())
        else:  # model space [-1, 1] clamped, mapped to [0, 1]
            want = (x[i].clamp(-1, 1) + 1) / 2
        assert torch.allclose(cell, want, atol=1e-6)
    # the gaps, and the empty sixth cell: mid-gray, so white strokes and black backgrounds both stand out
    assert bool((cells[4] == GRID_GAP).all() and (cells[:, 6] == GRID_GAP).all()) and 0 < GRID_GAP < 1
    assert bool((cells[5:9, 14:20] == GRID_GAP).all())


def test_save_picture_of_images_and_of_points(tmp_path):
    g = torch.Generator().manual_seed(1)
    save_picture(str(tmp_path / "images.png"), torch.randn(10, 1, 8, 8, generator=g), title="digits")
    save_picture(str(tmp_path / "points.png"), torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g))
    assert (tmp_path / "images.png").stat().st_size > 2_000 and (tmp_path / "points.png").stat().st_size > 10_000
