"""Shisen-Sho with photo tiles: G1's "Shisen-Sho-Cifar10" (docs/envs.md, "Shisen-Sho-Cifar10").

Same engine as `envs.shisensho` (rules, actions, rewards, layout); a tile is a picture from a
bank of classes and two tiles match when their CLASS is the same, whatever the pictures.
Each game samples its classes (9 of 10 on a 6x6 board, like the original) and, per class,
distinct pictures (4 per group of tiles).

Banks:
  * the default: a procedural bank drawn in code at construction (`procedural_bank`), ten
    classes of simple pictures with per-image variation (position, size, colours, noise);
    needs no data, used by tests and demos;
  * CIFAR-10 from a local python-version archive: `cifar_path=".../cifar-10-python.tar.gz"`
    (see `envs.cifar`; never downloaded), the first `bank_size` training images per class.
Bank pictures are resized once, at construction, to the cell size (`raster.resize`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from envs import cifar, raster
from envs.core import ConfigError, check_range, register
from envs.shisensho import ANSWER_INSTRUCTIONS, ShisenShoEngine, random_subset


@dataclasses.dataclass(frozen=True, eq=False)
class TileBank:
    """Pictures grouped by class: uint8 [classes, per_class, h, w, 3], the class names (as the
    perception text spells them) and a title for the prompt ("CIFAR-10 images")."""

    images: np.ndarray
    names: tuple[str, ...]
    title: str


# ---------------------------------------------------------------------------------------
# The procedural bank
# ---------------------------------------------------------------------------------------

# Each class is drawn on a 64-unit square from 12 uniforms u: u[0:2] move the subject, u[2]
# scales it, u[3:6] / u[6:9] jitter the subject / background colours, u[9:12] are free.


def _colour(base, u, spread):
    return jnp.clip(jnp.asarray(base, jnp.float32) + (u - 0.5) * 2.0 * spread, 0.0, 255.0)


def _plain(ys, xs, colour):
    return jnp.zeros((ys.shape[0], xs.shape[1], 3), jnp.float32) + colour


def _disc(ys, xs, cx, cy, r):
    return raster.sdf_ellipse(ys, xs, cx - r, cy - r, cx + r, cy + r)


def _sun(ys, xs, cx, cy, s, fg, bg, u):
    img = _plain(ys, xs, bg)
    turn = u[9] * jnp.pi / 4
    rays = [
        raster.sdf_segment(
            ys,
            xs,
            cx + 17 * s * jnp.cos(a),
            cy + 17 * s * jnp.sin(a),
            cx + 27 * s * jnp.cos(a),
            cy + 27 * s * jnp.sin(a),
            1.6 * s,
        )
        for a in [turn + k * jnp.pi / 4 for k in range(8)]
    ]
    img = raster.fill(img, raster.coverage(raster.sdf_union(*rays)), fg)
    return raster.fill(img, raster.coverage(_disc(ys, xs, cx, cy, 13 * s)), fg)


def _moon(ys, xs, cx, cy, s, fg, bg, u):
    img = _plain(ys, xs, bg)
    for k in range(3):
        sx, sy = 6 + 52 * u[9 + k], 6 + 14 * ((u[9 + k] * 7.0) % 1.0)
        img = raster.fill(img, raster.coverage(_disc(ys, xs, sx, sy, 1.3)), (255, 255, 220))
    crescent = jnp.maximum(_disc(ys, xs, cx, cy, 18 * s), -_disc(ys, xs, cx + 9 * s, cy - 5 * s, 15 * s))
    return raster.fill(img, raster.coverage(crescent), fg)


def _tree(ys, xs, cx, cy, s, fg, bg, u):
    img = _plain(ys, xs, bg)
    img = raster.fill(img, (ys > cy + 20 * s).astype(jnp.float32), (90, 160, 70))
    img = raster.fill(
        img, raster.coverage(raster.sdf_box(ys, xs, cx - 3 * s, cy + 6 * s, cx + 3 * s, cy + 22 * s)), (110, 70, 35)
    )
    low = raster.sdf_convex_polygon(ys, xs, [(cx, cy - 14 * s), (cx - 19 * s, cy + 10 * s), (cx + 19 * s, cy + 10 * s)])
    high = raster.sdf_convex_polygon(ys, xs, [(cx, cy - 26 * s), (cx - 15 * s, cy - 2 * s), (cx + 15 * s, cy - 2 * s)])
    return raster.fill(img, raster.coverage(raster.sdf_union(low, high)), fg)


def _house(ys, xs, cx, cy, s, fg, bg, u):
    img = _plain(ys, xs, bg)
    img = raster.fill(
        img, raster.coverage(raster.sdf_box(ys, xs, cx - 16 * s, cy - 4 * s, cx + 16 * s, cy + 20 * s)), fg
    )
    roof = raster.sdf_convex_polygon(ys, xs, [(cx, cy - 22 * s), (cx - 21 * s, cy - 3 * s), (cx + 21 * s, cy - 3 * s)])
    img = raster.fill(img, raster.coverage(roof), _colour((170, 50, 40), u[9:12], 30))
    img = raster.fill(
        img, raster.coverage(raster.sdf_box(ys, xs, cx - 4 * s, cy + 6 * s, cx + 4 * s, cy + 20 * s)), (90, 60, 40)
    )
    return raster.fill(
        img, raster.coverage(raster.sdf_box(ys, xs, cx + 7 * s, cy + 1 * s, cx + 13 * s, cy + 7 * s)), (200, 230, 250)
    )


def _fish(ys, xs, cx, cy, s, fg, bg, u):
    img = _plain(ys, xs, bg)
    tail = raster.sdf_convex_polygon(ys, xs, [(cx + 9 * s, cy), (cx + 22 * s, cy - 10 * s), (cx + 22 * s, cy + 10 * s)])
    body = raster.sdf_ellipse(ys, xs, cx - 17 * s, cy - 9 * s, cx + 13 * s, cy + 9 * s)
    img = raster.fill(img, raster.coverage(raster.sdf_union(body, tail)), fg)
    return raster.fill(img, raster.coverage(_disc(ys, xs, cx - 9 * s, cy - 2 * s, 2.2 * s)), (0, 0, 0))


def _flower(ys, xs, cx, cy, s, fg, bg, u):
    img = _plain(ys, xs, bg)
    img = raster.fill(img, raster.coverage(raster.sdf_segment(ys, xs, cx, cy, cx, cy + 32 * s, 1.8 * s)), (40, 110, 40))
    turn = u[9] * jnp.pi / 3
    petals = [
        _disc(ys, xs, cx + 10 * s * jnp.cos(a), cy + 10 * s * jnp.sin(a), 7 * s)
        for a in [turn + k * jnp.pi / 3 for k in range(6)]
    ]
    img = raster.fill(img, raster.coverage(raster.sdf_union(*petals)), fg)
    return raster.fill(img, raster.coverage(_disc(ys, xs, cx, cy, 5 * s)), (250, 210, 50))


def _sailboat(ys, xs, cx, cy, s, fg, bg, u):
    img = _plain(ys, xs, bg)
    img = raster.fill(img, (ys > cy + 13 * s).astype(jnp.float32), _colour((30, 90, 170), u[9:12], 25))
    hull = raster.sdf_convex_polygon(
        ys,
        xs,
        [(cx - 19 * s, cy + 8 * s), (cx + 19 * s, cy + 8 * s), (cx + 12 * s, cy + 17 * s), (cx - 12 * s, cy + 17 * s)],
    )
    img = raster.fill(img, raster.coverage(hull), (120, 70, 40))
    big = raster.sdf_convex_polygon(
        ys, xs, [(cx + 1 * s, cy - 24 * s), (cx + 1 * s, cy + 5 * s), (cx + 17 * s, cy + 5 * s)]
    )
    small = raster.sdf_convex_polygon(
        ys, xs, [(cx - 1 * s, cy - 18 * s), (cx - 1 * s, cy + 5 * s), (cx - 13 * s, cy + 5 * s)]
    )
    return raster.fill(img, raster.coverage(raster.sdf_union(big, small)), fg)


def _mountain(ys, xs, cx, cy, s, fg, bg, u):
    img = _plain(ys, xs, bg)
    back = raster.sdf_convex_polygon(
        ys, xs, [(cx - 16 * s, cy - 8 * s), (cx - 40 * s, cy + 26 * s), (cx + 8 * s, cy + 26 * s)]
    )
    img = raster.fill(img, raster.coverage(back), fg * 0.7)
    peak = raster.sdf_convex_polygon(
        ys, xs, [(cx + 4 * s, cy - 22 * s), (cx - 26 * s, cy + 26 * s), (cx + 34 * s, cy + 26 * s)]
    )
    img = raster.fill(img, raster.coverage(peak), fg)
    cap = raster.sdf_convex_polygon(
        ys, xs, [(cx + 4 * s, cy - 22 * s), (cx - 4.7 * s, cy - 8 * s), (cx + 12.7 * s, cy - 8 * s)]
    )
    return raster.fill(img, raster.coverage(cap), (250, 250, 250))


def _heart(ys, xs, cx, cy, s, fg, bg, u):
    img = _plain(ys, xs, bg)
    point = raster.sdf_convex_polygon(
        ys, xs, [(cx - 15.6 * s, cy - 1 * s), (cx + 15.6 * s, cy - 1 * s), (cx, cy + 19 * s)]
    )
    lobes = raster.sdf_union(
        _disc(ys, xs, cx - 7.5 * s, cy - 6 * s, 9 * s), _disc(ys, xs, cx + 7.5 * s, cy - 6 * s, 9 * s)
    )
    return raster.fill(img, raster.coverage(raster.sdf_union(lobes, point)), fg)


def _car(ys, xs, cx, cy, s, fg, bg, u):
    img = _plain(ys, xs, bg)
    img = raster.fill(img, (ys > cy + 14 * s).astype(jnp.float32), (95, 95, 100))
    body = raster.sdf_union(
        raster.sdf_box(ys, xs, cx - 23 * s, cy - 2 * s, cx + 23 * s, cy + 10 * s, 3 * s),
        raster.sdf_box(ys, xs, cx - 13 * s, cy - 13 * s, cx + 10 * s, cy + 1 * s, 3 * s),
    )
    img = raster.fill(img, raster.coverage(body), fg)
    img = raster.fill(
        img,
        raster.coverage(raster.sdf_box(ys, xs, cx - 10 * s, cy - 10 * s, cx + 7 * s, cy - 2 * s, 1.5 * s)),
        (190, 225, 245),
    )
    wheels = raster.sdf_union(
        _disc(ys, xs, cx - 13 * s, cy + 11 * s, 5.5 * s), _disc(ys, xs, cx + 13 * s, cy + 11 * s, 5.5 * s)
    )
    return raster.fill(img, raster.coverage(wheels), (20, 20, 20))


# name: (drawer, subject colour, subject jitter, background colour, background jitter)
PICTURE_CLASSES = {
    "sun": (_sun, (250, 200, 40), (5, 40, 30), (110, 170, 235), 35),
    "moon": (_moon, (240, 230, 150), 15, (20, 25, 70), 20),
    "tree": (_tree, (40, 140, 50), 35, (175, 215, 245), 25),
    "house": (_house, (225, 200, 150), 45, (205, 225, 240), 25),
    "fish": (_fish, (245, 140, 30), (10, 60, 30), (40, 110, 190), 30),
    "flower": (_flower, (225, 90, 170), (30, 60, 60), (130, 185, 100), 30),
    "sailboat": (_sailboat, (245, 245, 240), 10, (190, 220, 250), 20),
    "mountain": (_mountain, (120, 105, 95), 25, (150, 200, 240), 30),
    "heart": (_heart, (215, 30, 50), (30, 25, 25), (250, 230, 235), 15),
    "car": (_car, (60, 90, 200), 110, (215, 215, 220), 20),
}
PROCEDURAL_SIZE = 64


def _draw_class(name: str, uniforms, size: int):
    draw, fg, fg_spread, bg, bg_spread = PICTURE_CLASSES[name]
    ys, xs = raster.pixel_centres(size, size)
    k = size / 64.0

    def one(u):
        cx, cy = k * (32 + 10 * (u[0] - 0.5)), k * (32 + 8 * (u[1] - 0.5))
        s = k * (0.85 + 0.25 * u[2])
        fg_colour = _colour(fg, u[3:6], jnp.asarray(fg_spread, jnp.float32))
        return draw(ys, xs, cx, cy, s, fg_colour, _colour(bg, u[6:9], bg_spread), u)

    return jax.vmap(one)(uniforms)


@functools.lru_cache(maxsize=4)
def procedural_bank(per_class: int, size: int = PROCEDURAL_SIZE, seed: int = 0) -> TileBank:
    """Ten classes of procedurally drawn pictures, `per_class` variations each (position,
    size, colours and a little pixel noise differ). Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    images = []
    for name in PICTURE_CLASSES:
        uniforms = jnp.asarray(rng.random((per_class, 12)), jnp.float32)
        drawn = np.asarray(raster.bake(lambda name=name, uniforms=uniforms: _draw_class(name, uniforms, size)))
        noise = rng.normal(0.0, 6.0, drawn.shape)
        images.append(np.clip(np.round(drawn + noise), 0, 255).astype(np.uint8))
    return TileBank(np.stack(images), tuple(PICTURE_CLASSES), "toy-picture")


@functools.lru_cache(maxsize=2)
def cifar_bank(path: str, per_class: int) -> TileBank:
    images, names = cifar.load_cifar10(path, "train", per_class)
    return TileBank(images, names, "CIFAR-10")


# ---------------------------------------------------------------------------------------
# The game
# ---------------------------------------------------------------------------------------


@register("shisensho_photo")
@dataclasses.dataclass(frozen=True, repr=False)
class ShisenShoPhoto(ShisenShoEngine):
    """G1's Shisen-Sho-Cifar10. Static config: board_size (even, 4..12; 6 like the paper),
    image_size (H, W) multiples of 28, coordinate_labels, solvable (see envs.shisensho);
    cifar_path (None: the procedural bank; else a local CIFAR-10 python archive or folder);
    bank_size (pictures kept per class, >= 4); num_classes (the first n classes of the bank;
    None: all)."""

    name = "shisensho_photo"
    cifar_path: str | None = None
    bank_size: int = 32
    num_classes: int | None = None

    def __post_init__(self):
        check_range(self.name, "bank_size", self.bank_size, 4, 5000)
        if self.cifar_path is not None and not isinstance(self.cifar_path, str):
            raise ConfigError(f"{self.name}: cifar_path must be a path string or None, got {self.cifar_path!r}")
        available = len(self.bank.names)
        if self.num_classes is None:
            object.__setattr__(self, "num_classes", available)
        check_range(self.name, "num_classes", self.num_classes, 1, available)
        super().__post_init__()

    @functools.cached_property
    def bank(self) -> TileBank:
        if self.cifar_path is None:
            return procedural_bank(self.bank_size)
        return cifar_bank(self.cifar_path, self.bank_size)

    @property
    def num_types(self) -> int:
        return self.num_classes

    @functools.cached_property
    def type_names(self) -> tuple[str, ...]:
        return ("-",) + self.bank.names[: self.num_classes]

    @property
    def prompt(self) -> str:
        names = list(self.type_names[1:])
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])}, and {names[-1]}"
        title = self.bank.title
        return (
            f"You are playing a Shisen-sho puzzle game that uses {title} images. Each tile on the board corresponds to "
            f"one of the {title} classes: {listed}. The objective is to find a pair of tiles that belong to the same "
            "class and can be connected with a path that does not cross any other tiles and makes at most two turns.\n"
            f"{ANSWER_INSTRUCTIONS}"
        )

    # --- tiles ---------------------------------------------------------------------------
    @functools.cached_property
    def _copy_index(self) -> np.ndarray:
        """int32 [G^2]: for each dealt tile, how many tiles of its class come before it (slot s
        holds the class ranked s % num_classes, so it is that class's (s // num_classes)-th
        group of 4)."""
        tile = np.arange(self.num_cells)
        return (4 * ((tile // 4) // self.num_types) + tile % 4).astype(np.int32)

    @property
    def _face_words(self) -> int:
        return min(self.max_copies, self.bank_size) * self.num_types

    def _faces(self, words, tile_types):
        """Distinct pictures for the tiles of a class while the bank has enough: a random
        subset of `max_copies` pictures per class, handed out in order."""
        n_img = self.bank_size
        draws = min(self.max_copies, n_img)
        picks = random_subset(words.reshape(draws, self.num_types), n_img)  # [class, draw]
        classes = tile_types - 1
        images = picks[classes, jnp.asarray(self._copy_index) % draws]
        return 1 + classes * n_img + images

    def _face_atlas(self):
        c = self.layout.cell
        pictures = jnp.asarray(self.bank.images[: self.num_classes]).reshape(-1, *self.bank.images.shape[2:])
        resized = jax.vmap(lambda img: raster.resize(img, c, c))(pictures)
        return jnp.concatenate([raster.to_uint8(self._empty_tile())[None], resized])

    def from_board(self, board, faces=None, score: int = 0, steps: int = 0):
        """State from int [G, G] classes (0 empty, class k -> k + 1) or the perception text.
        faces: optional int [G, G] picture index within the class per cell (default: the
        tiles of a class take pictures 0, 1, 2... in row-major order)."""
        arr = self._check_board(board)
        if faces is None:
            seen = np.zeros(self.num_types + 1, np.int64)
            faces = np.zeros_like(arr)
            for idx, t in np.ndenumerate(arr):
                faces[idx], seen[t] = seen[t] % self.bank_size, seen[t] + 1
        faces = np.asarray(faces)
        if faces.shape != arr.shape or (faces < 0).any() or (faces >= self.bank_size).any():
            raise ValueError(
                f"{self.name}: faces must be picture indices in [0, {self.bank_size}) of shape {arr.shape}"
            )
        atlas_index = np.where(arr > 0, 1 + (arr - 1) * self.bank_size + faces, 0)
        return self._state(arr, atlas_index, self._board_pairs(arr), score, steps)
