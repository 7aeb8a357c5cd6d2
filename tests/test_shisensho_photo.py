"""Shisen-Sho with photo tiles: class matching, per-game class and picture sampling, the
procedural bank, a CIFAR-10 bank from a test-written archive, text, rendering, config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chi_square
import envs
from envs import raster
from envs.grammar import encode_pair
from envs.shisensho_photo import PICTURE_CLASSES, procedural_bank
from test_cifar import fake_image, write_cifar

ENV = envs.make("shisensho_photo")  # 6x6, the procedural bank: 10 classes x 32 pictures
G, N = ENV.board_size, ENV.bank_size
RESET, STEP, VALID = jax.jit(ENV.reset), jax.jit(ENV.step), jax.jit(ENV.valid_actions)


def picture(face):
    """(class, picture index) of an atlas face id."""
    return divmod(int(face) - 1, N)


def test_a_game_samples_nine_classes_and_distinct_pictures():
    for seed in range(5):
        state = RESET(jax.random.key(seed))
        board, faces = np.asarray(state.board), np.asarray(state.faces)
        classes, counts = np.unique(board, return_counts=True)
        assert len(classes) == 9 and (counts == 4).all() and classes.min() >= 1 and classes.max() <= 10
        for cls in classes:
            pics = [picture(f) for f in faces[board == cls]]
            assert all(c == cls - 1 for c, _ in pics)  # faces show their tile's class
            assert len({p for _, p in pics}) == 4  # 4 different pictures of the class
    # pictures and classes vary from game to game, uniformly (chi-square): the class of a
    # cell, and the picture a tile of a class shows
    states = jax.jit(jax.vmap(ENV.reset))(jax.random.split(jax.random.key(0), 4000))
    board, faces = np.asarray(states.board).reshape(4000, -1), np.asarray(states.faces).reshape(4000, -1)
    chi_square.assert_uniform(board[:, 0], range(1, 11), "class of cell 0")
    chi_square.assert_uniform((faces[:, 0] - 1) % N, range(N), "picture of cell 0")


def test_tiles_match_by_class_not_by_picture():
    board = np.zeros((G, G), np.int32)
    board[0, 0] = board[0, 1] = 3  # two "tree" tiles
    board[2, 2] = 4
    faces = np.zeros((G, G), np.int32)
    faces[0, 0], faces[0, 1] = 5, 17  # different pictures
    state = ENV.from_board(board, faces=faces)
    assert picture(state.faces[0, 0]) != picture(state.faces[0, 1])
    new, reward, done, _ = STEP(jax.random.key(0), state, jnp.int32(encode_pair(0, 0, 0, 1, G)))
    assert float(reward) == 1.0 and bool(done) and int(new.faces[0, 0]) == 0
    _, reward, _, _ = STEP(jax.random.key(0), state, jnp.int32(encode_pair(0, 0, 2, 2, G)))
    assert float(reward) == -1.0


def test_steps_keep_class_counts_even_and_masks_agree():
    state = RESET(jax.random.key(1))
    pick = jax.jit(ENV.random_valid_action)
    for i in range(10):
        mask = np.asarray(VALID(state))
        action = pick(jax.random.key(i), state)
        assert mask[int(action)] or not mask.any()
        state, reward, done, _ = STEP(jax.random.key(i), state, action)
        counts = np.bincount(np.asarray(state.board).reshape(-1), minlength=11)[1:]
        assert (counts % 2 == 0).all() and int(state.remaining) == counts.sum()
        if bool(done):
            break


def test_describe_prompt_and_round_trip():
    board = np.zeros((G, G), np.int32)
    board[0, 0], board[1, 5] = 1, 10
    text = ENV.describe(ENV.from_board(board))
    assert text.split("\n")[0] == " sun | - | - | - | - | - "
    assert text.split("\n")[1] == " - | - | - | - | - | car "
    state = RESET(jax.random.key(2))
    np.testing.assert_array_equal(ENV.from_board(ENV.describe(state)).board, state.board)
    assert (
        "toy-picture classes: sun, moon, tree, house, fish, flower, sailboat, mountain, heart, and car." in ENV.prompt
    )
    assert ENV.parse("<answer>(0, 0) (1, 5)</answer>") == encode_pair(0, 0, 1, 5, G)
    assert ENV.parse("<answer>(0, 6) (1, 5)</answer>") == ENV.invalid_action


def test_render_shows_the_resized_bank_pictures():
    board = np.zeros((G, G), np.int32)
    board[1, 2] = 6  # a flower
    state = ENV.from_board(board, faces=np.full((G, G), 7))
    img = np.asarray(jax.jit(ENV.render)(state))
    L = ENV.layout
    c = L.cell
    y, x = L.board_y + c, L.board_x + 2 * c
    expected = np.asarray(raster.resize(jnp.asarray(ENV.bank.images[5, 7]), c, c))
    np.testing.assert_array_equal(img[y : y + c, x : x + c], expected)
    empty = img[L.board_y : L.board_y + c, L.board_x : L.board_x + c]
    assert empty[c // 2, c // 2].tolist() == [255, 255, 255] and empty[0, c // 2].tolist() == [200, 200, 200]


def test_procedural_bank_is_deterministic_and_varied():
    bank = procedural_bank(6)
    assert bank.images.shape == (10, 6, 64, 64, 3) and bank.names == tuple(PICTURE_CLASSES)
    np.testing.assert_array_equal(bank.images, procedural_bank.__wrapped__(6).images)  # same seed, same pictures
    flat = bank.images.reshape(10, 6, -1).astype(np.float32)
    within = np.abs(flat[:, :, None] - flat[:, None]).mean(-1)[:, ~np.eye(6, dtype=bool)]
    assert (within > 3).all()  # no two pictures of a class are alike
    # distinct classes: every picture is nearest to its own class's mean picture
    small = bank.images.reshape(10, 6, 16, 4, 16, 4, 3).mean((3, 5)).reshape(10, 6, -1)
    centroids = small.mean(1)
    nearest = np.linalg.norm(small[:, :, None] - centroids[None, None], axis=-1).argmin(-1)
    np.testing.assert_array_equal(nearest, np.repeat(np.arange(10)[:, None], 6, 1))


def test_cifar_bank_from_a_local_archive(tmp_path):
    archive = write_cifar(tmp_path, archive=True)
    env = envs.make("shisensho_photo", cifar_path=str(archive), bank_size=4)
    assert env.bank.title == "CIFAR-10" and env.bank.images.shape == (10, 4, 32, 32, 3)
    # the original's CIFAR prompt, word for word
    assert env.prompt.startswith(
        "You are playing a Shisen-sho puzzle game that uses CIFAR-10 images. Each tile on the board corresponds to one "
        "of the CIFAR-10 classes: airplane, automobile, bird, cat, deer, dog, frog, horse, ship, and truck. The "
        "objective is to find a pair of tiles that belong to the same class and can be connected with a path that does "
        "not cross any other tiles and makes at most two turns.\nPlease analyze the game board"
    )
    state = jax.jit(env.reset)(jax.random.key(0))
    shown = {cell.strip() for row in env.describe(state).split("\n") for cell in row.split("|")}
    assert len(shown) == 9 and shown <= set(env.bank.names)  # 9 of the 10 CIFAR-10 classes
    board = np.zeros((G, G), np.int32)
    board[0, 0] = 4  # class 3 (cat), picture 1 = the archive's image 13
    img = np.asarray(jax.jit(env.render)(env.from_board(board, faces=np.ones((G, G), int))))
    L, c = env.layout, env.layout.cell
    tile = img[L.board_y : L.board_y + c, L.board_x : L.board_x + c]
    np.testing.assert_array_equal(tile, np.asarray(raster.resize(jnp.asarray(fake_image(13, 3)), c, c)))


@pytest.mark.parametrize(
    "config,error,message",
    [
        (dict(bank_size=3), envs.ConfigError, r"bank_size=3 must be an integer in \[4, 5000\]"),
        (dict(num_classes=11), envs.ConfigError, r"num_classes=11 must be an integer in \[1, 10\]"),
        (dict(cifar_path=5), envs.ConfigError, "cifar_path must be a path string"),
        (dict(cifar_path="/no/such/cifar"), FileNotFoundError, "/no/such/cifar.*cifar-10-python.tar.gz"),
        (dict(board_size=5), envs.ConfigError, "must be even"),
    ],
)
def test_config_errors(config, error, message):
    with pytest.raises(error, match=message):
        envs.make("shisensho_photo", **config)


def test_fewer_classes_and_bigger_boards():
    env = envs.make("shisensho_photo", num_classes=3, board_size=8, bank_size=8)
    assert env.max_copies == 4 * 6 and env.type_names == ("-", "sun", "moon", "tree")
    state = jax.jit(env.reset)(jax.random.key(0))
    counts = np.bincount(np.asarray(state.board).reshape(-1))[1:]
    assert sorted(counts.tolist()) == [20, 20, 24]  # 16 slots over 3 classes: 6, 5, 5 groups of 4
    faces = np.asarray(state.faces)
    for cls in (1, 2, 3):  # each class shows all 8 of its bank pictures before repeating one
        assert len(np.unique(faces[np.asarray(state.board) == cls])) == 8
    assert "sun, moon, and tree" in env.prompt
