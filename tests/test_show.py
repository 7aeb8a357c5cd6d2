"""`python -m envs.show`: writes a PNG grid and a small GIF of batched random play; takes the
game's options; refuses bad arguments with a clear message before playing."""

import re

import numpy as np
import pytest
from PIL import Image

from envs import show


def test_show_writes_png_grid_and_gif(tmp_path, capsys):
    png, gif = tmp_path / "b.png", tmp_path / "sub" / "p.gif"
    assert (
        show.main(
            ["2048", "--batch", "4", "--steps", "3", "--image-size", "224", "196", "--out", str(png), "--gif", str(gif)]
        )
        == 0
    )
    grid = Image.open(png)
    assert grid.size == (2 * 196 + 3 * 4, 2 * 224 + 3 * 4)  # 2x2 grid with 4-px padding
    animation = Image.open(gif)
    assert animation.n_frames == 4  # the start frame + 3 moves
    assert animation.size == grid.size  # small enough to keep its size
    animation.seek(3)  # the last frame, with the unchanged pixels of the earlier ones
    last = np.asarray(animation.convert("RGB"), np.int16)
    assert np.abs(last - np.asarray(grid.convert("RGB"), np.int16)).mean() < 1.0  # palette rounding only
    out = capsys.readouterr().out
    assert "perception text" in out and " | " in out


def test_show_takes_the_games_options(tmp_path, capsys):
    png = str(tmp_path / "b.png")
    assert show.main(["shisensho", "--preset", "more_shapes_colors", "--image-size", "168", "140", "--out", png]) == 0
    out = capsys.readouterr().out
    assert "preset='more_shapes_colors'" in out and "num_colors=16" in out
    args = [
        "swap",
        "--board-size",
        "5",
        "--num-colors",
        "2",
        "--num-shapes",
        "2",
        "--set",
        "max_moves=3",
        "--set",
        "max-cascades=4",
    ]
    assert show.main(args + ["--steps", "4", "--image-size", "336", "280", "--out", png]) == 0
    out = capsys.readouterr().out
    assert "board_size=5, num_colors=2, num_shapes=2" in out and "max_moves=3, max_cascades=4" in out
    assert "finished games: 1" in out  # 4 valid moves with 3 allowed: one game ended


@pytest.mark.parametrize(
    "args,message",
    [
        (["chess"], "unknown game 'chess'"),
        (["2048", "--image-size", "100", "100"], "multiples of 28"),
        (["2048", "--image-size", "448", "392.5"], "invalid int value: '392.5'"),
        (["2048", "--set", "image_size=(448, 392.5)"], "must be two integers"),
        (["2048", "--image-size", "8400", "8400"], "exceeds the limit of 4096"),
        (["2048", "--preset", "more_tiles"], "unknown option.*preset"),
        (["2048", "--set", "board_size"], "--set takes key=value"),
        (["2048", "--fps", "0", "--gif", "p.gif"], r"--fps must be in \(0, 100\], got 0"),
        (["2048", "--fps", "-3"], "--fps must be"),
        (["2048", "--out", "pictures/"], "must be a file name ending in .png"),
        (["2048", "--out", "board.jpg"], "must be a file name ending in .png"),
        (["2048", "--gif", "play.png"], "must be a file name ending in .gif"),
        (["2048", "--out", "{file}/board.png"], "cannot create the folder"),
        (["2048", "--batch", "0"], "--batch must be >= 1"),
        (["2048", "--gif-max-side", "0"], "--gif-max-side must be >= 16"),
    ],
)
def test_show_rejects_bad_input_before_playing(args, message, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    args = [a.format(file=blocker) for a in args]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(show, "play", lambda *a, **k: pytest.fail("played before checking its arguments"))
    with pytest.raises(SystemExit):
        show.main(args)
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_the_readme_gif_stays_small(tmp_path):
    """The README's command (16 boards, 200 moves, default frames) writes a GIF of a few MB
    (it was 17.5 MB): frames shrunk to fit 640 px, one palette, unchanged pixels transparent."""
    gif = tmp_path / "2048.gif"
    assert (
        show.main(["2048", "--batch", "16", "--steps", "200", "--out", str(tmp_path / "2048.png"), "--gif", str(gif)])
        == 0
    )
    animation = Image.open(gif)
    assert animation.n_frames == 201 and max(animation.size) <= show.GIF_MAX_SIDE
    assert gif.stat().st_size < 5e6
