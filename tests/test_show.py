"""`python -m envs.show`: writes a PNG grid and a GIF of batched random play; clear errors."""

import pytest
from PIL import Image

from envs import show


def test_show_writes_png_grid_and_gif(tmp_path, capsys):
    png, gif = tmp_path / "b.png", tmp_path / "sub" / "p.gif"
    assert show.main(["2048", "--batch", "4", "--steps", "3", "--image-size", "224", "196", "--out", str(png), "--gif", str(gif)]) == 0
    grid = Image.open(png)
    assert grid.size == (2 * 196 + 3 * 4, 2 * 224 + 3 * 4)  # 2x2 grid with 4-px padding
    animation = Image.open(gif)
    assert animation.n_frames == 4  # the start frame + 3 moves
    out = capsys.readouterr().out
    assert "perception text" in out and " | " in out


def test_show_rejects_bad_input(capsys):
    with pytest.raises(SystemExit):
        show.main(["chess"])
    assert "unknown game 'chess'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        show.main(["2048", "--image-size", "100", "100"])
    assert "multiples of 28" in capsys.readouterr().err
