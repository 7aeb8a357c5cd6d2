"""Raster primitives on the device, shared by every game's renderer.

Shapes are signed distance fields (SDF, in pixels, negative inside) evaluated at pixel
centres; `coverage(sdf)` turns one into an anti-aliased mask in [0, 1]. Text comes from the
font that ships with Pillow: static text is drawn once on the host (`text_alpha`), dynamic
text (scores, counters) from glyphs or digit tiles drawn once and kept as device constants,
placed by a gather into a small strip, so a score that changes every step costs a few
thousand pixels, not a full frame.

Renderers use these two ways:
  * at construction, to bake an atlas of every cell state (tile x value/colour/shape) as a
    uint8 array (drawn once, jitted);
  * per frame, to draw the board into a static background one atlas tile per cell
    (`paste_cells`; `grid_from_atlas` + `paste` for small rows such as digits), and place
    dynamic text (`DigitTiles`, or glyph columns laid out by `text_columns`).
All functions are pure jnp code: jittable, vmappable, no host round trip while drawing.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------------------------------
# Signed distance fields and masks
# ---------------------------------------------------------------------------------------


def pixel_centres(height: int, width: int):
    """(ys [H, 1], xs [1, W]) float32 pixel-centre coordinates: pixel (i, j) covers
    [j, j+1) x [i, i+1), so its centre is (j + 0.5, i + 0.5)."""
    ys = jnp.arange(height, dtype=jnp.float32)[:, None] + 0.5
    xs = jnp.arange(width, dtype=jnp.float32)[None, :] + 0.5
    return ys, xs


def coverage(sdf):
    """Anti-aliased fill mask of a shape from its SDF: 1 inside, 0 outside, linear across the
    one-pixel band at the edge (a box-filter approximation of exact area coverage)."""
    return jnp.clip(0.5 - sdf, 0.0, 1.0)


def inner_outline(sdf, width: float):
    """Stroke of `width` pixels lying just inside the boundary (pygame draws outlines this way)."""
    return coverage(jnp.abs(sdf + 0.5 * width) - 0.5 * width)


def sdf_box(ys, xs, x0, y0, x1, y1, radius=0.0):
    """Axis-aligned rectangle [x0, x1] x [y0, y1], corners rounded by `radius`."""
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    hx, hy = 0.5 * (x1 - x0) - radius, 0.5 * (y1 - y0) - radius
    qx = jnp.abs(xs - cx) - hx
    qy = jnp.abs(ys - cy) - hy
    outside = jnp.sqrt(jnp.maximum(qx, 0.0) ** 2 + jnp.maximum(qy, 0.0) ** 2)
    inside = jnp.minimum(jnp.maximum(qx, qy), 0.0)
    return outside + inside - radius


def sdf_ellipse(ys, xs, x0, y0, x1, y1):
    """Ellipse inscribed in the box; the distance is scaled by the smaller semi-axis, which is
    exact for circles and accurate to a fraction of a pixel at the edge of mild ellipses."""
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    ax, ay = 0.5 * (x1 - x0), 0.5 * (y1 - y0)
    r = jnp.sqrt(((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2)
    return (r - 1.0) * jnp.minimum(ax, ay)


def sdf_convex_polygon(ys, xs, vertices):
    """Convex polygon given by vertices (list of (x, y), either winding): the largest signed
    distance to the edge lines. Exact inside and along edges; underestimates only
    diagonally beyond corners, which does not matter for a one-pixel coverage band."""
    verts = [(jnp.float32(x), jnp.float32(y)) for x, y in vertices]
    n = len(verts)
    area2 = sum(verts[i][0] * verts[(i + 1) % n][1] - verts[(i + 1) % n][0] * verts[i][1] for i in range(n))
    sign = jnp.where(area2 > 0, 1.0, -1.0)
    dist = None
    for i in range(n):
        (ax, ay), (bx, by) = verts[i], verts[(i + 1) % n]
        ex, ey = bx - ax, by - ay
        length = jnp.sqrt(ex * ex + ey * ey)
        # outward normal for counter-clockwise (in y-down coordinates: clockwise) winding
        d = sign * ((xs - ax) * ey - (ys - ay) * ex) / length
        dist = d if dist is None else jnp.maximum(dist, d)
    return dist


def sdf_segment(ys, xs, x0, y0, x1, y1, half_width):
    """A thick line segment with flat-ish (round) caps."""
    px, py = xs - x0, ys - y0
    ex, ey = x1 - x0, y1 - y0
    t = jnp.clip((px * ex + py * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    return jnp.sqrt((px - t * ex) ** 2 + (py - t * ey) ** 2) - half_width


def sdf_union(*sdfs):
    return functools.reduce(jnp.minimum, sdfs)


# The six tile shapes of the G1 matching games, drawn in a square box (x, y, size).
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
# Shapes the G1 games outline in black (cross and the X-shaped "star" are not outlined).
OUTLINED_SHAPES = frozenset({"circle", "square", "triangle", "diamond"})


def shape_sdf(shape: str, ys, xs, x, y, size, bar=None):
    """SDF of one of `SHAPES` in the box [x, x+size] x [y, y+size], with G1's geometry
    (docs/envs.md, "Shisen-Sho"): cross = two bars of width `bar` (8/60 of the box by default),
    "star" = an X of two `bar`-wide diagonals."""
    bar = size * 8.0 / 60.0 if bar is None else bar
    x1, y1, cx, cy = x + size, y + size, x + 0.5 * size, y + 0.5 * size
    if shape == "circle":
        return sdf_ellipse(ys, xs, x, y, x1, y1)
    if shape == "square":
        return sdf_box(ys, xs, x, y, x1, y1)
    if shape == "triangle":
        return sdf_convex_polygon(ys, xs, [(cx, y), (x, y1), (x1, y1)])
    if shape == "diamond":
        return sdf_convex_polygon(ys, xs, [(cx, y), (x1, cy), (cx, y1), (x, cy)])
    if shape == "cross":
        return sdf_union(
            sdf_box(ys, xs, x, cy - 0.5 * bar, x1, cy + 0.5 * bar),
            sdf_box(ys, xs, cx - 0.5 * bar, y, cx + 0.5 * bar, y1),
        )
    if shape == "star":
        return sdf_union(
            sdf_segment(ys, xs, x, y, x1, y1, 0.5 * bar),
            sdf_segment(ys, xs, x, y1, x1, y, 0.5 * bar),
        )
    raise ValueError(f"unknown shape {shape!r}; shapes: {SHAPES}")


# ---------------------------------------------------------------------------------------
# Compositing
# ---------------------------------------------------------------------------------------


def bake(draw) -> np.ndarray:
    """Run a drawing function eagerly and keep the result as a host numpy array.

    Atlases and backgrounds are drawn once and cached on the env; the first call may happen
    while a jitted function is being traced, and a cached tracer would leak into later
    traces. Evaluating at compile time and storing numpy avoids that."""
    # One compiled program, lowered in a trace of its own and run at once: op-by-op eager drawing
    # is much slower for text-heavy atlases, and under `ensure_compile_time_eval` every jitted
    # helper the drawing calls would compile and run on its own.
    return np.asarray(jax.jit(draw).lower().compile()())


def canvas(height: int, width: int, color) -> jax.Array:
    """A float32 [H, W, 3] image filled with an RGB colour (0..255)."""
    return jnp.broadcast_to(jnp.asarray(color, jnp.float32), (height, width, 3))


def fill(image, mask, color):
    """Alpha-composite a solid colour through a [H, W] mask onto a float [H, W, 3] image."""
    m = mask[..., None]
    return image * (1.0 - m) + jnp.asarray(color, jnp.float32) * m


def to_uint8(image):
    return jnp.clip(jnp.round(image), 0, 255).astype(jnp.uint8)


def paste(image, patch, y: int, x: int):
    """Paste `patch` at a static (y, x) offset."""
    h, w = patch.shape[:2]
    return image.at[y : y + h, x : x + w].set(patch.astype(image.dtype))


@dataclasses.dataclass(frozen=True)
class BoardLayout:
    """Pixel layout of a board of square cells: `cell`-pixel cells (`scale` = cell over the
    original game's cell), the board's top-left at (board_x, board_y), a `band`-pixel band for
    coordinate labels above and left of it, a text strip on rows [strip_y, strip_y + strip_h)
    below it."""

    cell: int
    scale: float
    band: int
    board_x: int
    board_y: int
    strip_y: int
    strip_h: int

    @classmethod
    def centred(
        cls, image_size: tuple[int, int], board_size: int, cell: int, scale: float, band: int, strip_h: int
    ) -> BoardLayout:
        """The board, its band and its strip centred in the image together."""
        h, w = image_size
        board = board_size * cell
        x, y = (w - band - board) // 2 + band, (h - band - board - strip_h) // 2 + band
        return cls(cell=cell, scale=scale, band=band, board_x=x, board_y=y, strip_y=y + board, strip_h=strip_h)


def paste_cells(image, atlas, ids, y: int, x: int):
    """Draw a board of atlas tiles into `image` with its top-left at a static (y, x):
    atlas [K, th, tw, C], ids int [R, Cols] -> the image with cell (i, j) showing
    atlas[ids[i, j]]. Same pixels as `paste(image, grid_from_atlas(atlas, ids), y, x)`, but
    each cell's tile is gathered by its own op and written with a static
    dynamic_update_slice, which XLA fuses into the in-place update of the frame (no
    board-sized intermediate to copy): faster frames on CPU, see BENCHMARKS.md. One
    update per cell, so compile time grows with R * Cols."""
    th, tw = atlas.shape[1:3]
    for i in range(ids.shape[0]):
        for j in range(ids.shape[1]):
            image = jax.lax.dynamic_update_slice(
                image, atlas[ids[i, j]].astype(image.dtype), (y + i * th, x + j * tw, 0)
            )
    return image


def grid_from_atlas(atlas, ids):
    """Assemble a board image by gathering one pre-drawn tile per cell.

    atlas: [K, th, tw, C] tiles; ids: int [R, Cols] tile indices -> [R*th, Cols*tw, C].
    The gather takes whole tile *rows* (tw*C contiguous values) in frame order, so the
    output needs no transpose: one copy-like pass, which is what bounds rendering on CPU."""
    k, th, tw, ch = atlas.shape
    rows = atlas.reshape(k * th, tw * ch)
    r, c = ids.shape
    index = ids[:, None, :] * th + jnp.arange(th)[None, :, None]  # [R, th, Cols]
    return rows[index].reshape(r * th, c * tw, ch)


def resize(image, height: int, width: int, method: str = "linear"):
    """Resize a [H, W, 3] image (any dtype) with anti-aliasing; returns the input dtype."""
    out = jax.image.resize(image.astype(jnp.float32), (height, width, image.shape[-1]), method=method, antialias=True)
    if image.dtype == jnp.uint8:
        return to_uint8(out)
    return out.astype(image.dtype)


# ---------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------

FIRST_CHAR, LAST_CHAR = 32, 126  # printable ASCII


@dataclasses.dataclass(frozen=True, eq=False)
class GlyphAtlas:
    """Alpha masks of printable ASCII at one pixel size, from Pillow's bundled font.

    alpha: float32 [n_chars, cell_h, cell_w]; advance: int32 [n_chars] horizontal advance in
    pixels; `ascent`: baseline offset from the top of a cell. Host numpy arrays (they become
    XLA constants where used)."""

    px: int
    alpha: np.ndarray
    advance: np.ndarray
    cell_h: int
    cell_w: int
    ascent: int

    def codes(self, text: str, length: int | None = None) -> np.ndarray:
        """Host: string -> int32 glyph indices (unknown characters become '?'), padded with
        -1 (blank) to `length`."""
        idx = [ord(ch) - FIRST_CHAR if FIRST_CHAR <= ord(ch) <= LAST_CHAR else ord("?") - FIRST_CHAR for ch in text]
        if length is not None:
            if len(idx) > length:
                raise ValueError(f"text {text!r} is longer than {length} characters")
            idx += [-1] * (length - len(idx))
        return np.asarray(idx, np.int32)

    def text_width(self, text: str) -> int:
        return int(sum(self.advance[c] for c in self.codes(text)))


@functools.cache
def glyph_atlas(px: int, stroke: int = 0) -> GlyphAtlas:
    """Build (once per size) the glyph atlas from Pillow's bundled FreeType font (Aileron).
    `stroke` > 0 thickens strokes (a bold look) by that many pixels."""
    from PIL import Image, ImageDraw, ImageFont

    if px < 4:
        raise ValueError(f"font size {px} px is too small to be legible")
    font = ImageFont.load_default(size=px)
    ascent, descent = font.getmetrics()
    chars = [chr(c) for c in range(FIRST_CHAR, LAST_CHAR + 1)]
    advances = [int(round(font.getlength(ch))) + stroke for ch in chars]
    cell_w = max(max(advances), max(font.getbbox(ch, stroke_width=stroke)[2] for ch in chars)) + stroke
    cell_h = ascent + descent + 2 * stroke
    alpha = np.zeros((len(chars), cell_h, cell_w), np.float32)
    for i, ch in enumerate(chars):
        img = Image.new("L", (cell_w, cell_h), 0)
        ImageDraw.Draw(img).text((stroke, stroke), ch, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
        alpha[i] = np.asarray(img, np.float32) / 255.0
    return GlyphAtlas(
        px=px,
        alpha=alpha,
        advance=np.asarray(advances, np.int32),
        cell_h=cell_h,
        cell_w=cell_w,
        ascent=ascent + stroke,
    )


def number_codes(value, num_chars: int):
    """Jittable: the decimal digits of a non-negative integer as glyph codes, most significant
    first, left-aligned and padded with -1 (blank) to `num_chars`. Values with more digits
    than fit show their lowest `num_chars` digits."""
    value = jnp.maximum(jnp.asarray(value, jnp.int32), 0)
    powers = jnp.asarray([10**k for k in range(num_chars - 1, -1, -1)], jnp.int32)
    digits = (value // powers) % 10  # right-aligned, with leading zeros
    n_digits = jnp.sum(value >= jnp.asarray([10**k for k in range(num_chars)], jnp.int32)).clip(1, num_chars)
    shift = num_chars - n_digits
    idx = jnp.arange(num_chars) + shift
    left = jnp.where(idx < num_chars, digits[jnp.minimum(idx, num_chars - 1)], -1)
    return jnp.where(left >= 0, left + (ord("0") - FIRST_CHAR), -1).astype(jnp.int32)


def concat_codes(*parts):
    """Join code arrays (static prefixes from `atlas.codes` and dynamic `number_codes`),
    squeezing out -1 blanks so that the text reads continuously. Jittable; static length."""
    codes = jnp.concatenate([jnp.asarray(p, jnp.int32) for p in parts])
    keep = codes >= 0
    order = jnp.argsort(~keep, stable=True)  # kept codes first, original order preserved
    return jnp.where(jnp.sort(~keep), -1, codes[order])


def text_columns(atlas: GlyphAtlas, codes, width: int):
    """Layout of `codes` left to right with the font's advances, over `width` pixel columns:
    int32 [width], per column the glyph column it shows (code * cell_w + x within the glyph;
    -1 where no glyph is), plus the text's pixel width. Blank (-1) codes take no space."""
    advance = jnp.asarray(atlas.advance)
    adv = jnp.where(codes >= 0, advance[jnp.maximum(codes, 0)], 0)
    starts = jnp.cumsum(adv) - adv  # x of each glyph
    xs = jnp.arange(width)
    # which glyph covers column x: the last one starting at or before x
    which = jnp.clip(jnp.searchsorted(starts, xs, side="right") - 1, 0, codes.shape[0] - 1)
    local_x = xs - starts[which]
    code = codes[which]
    valid = (code >= 0) & (local_x < adv[which]) & (local_x < atlas.cell_w)
    column = jnp.maximum(code, 0) * atlas.cell_w + jnp.clip(local_x, 0, atlas.cell_w - 1)
    return jnp.where(valid, column, -1), jnp.sum(adv)


def glyph_columns(atlas: GlyphAtlas) -> np.ndarray:
    """float32 [cell_h, n_glyphs * cell_w]: every glyph column of the font side by side, in
    the order `text_columns` indexes them."""
    alpha = np.asarray(atlas.alpha)
    return alpha.transpose(1, 0, 2).reshape(alpha.shape[1], -1)


@dataclasses.dataclass(frozen=True, eq=False)
class DigitTiles:
    """Digits drawn like board tiles: uint8 [11, h, w, 3] cells for 0-9 and a blank (index
    10), pre-blended in one colour on one background. A number is a row of fixed-width
    cells, so stamping it is a gather + paste with no per-frame blending: the cheap way to
    show a score that changes every step."""

    tiles: np.ndarray
    height: int
    width: int

    BLANK = 10

    def row(self, value, num_digits: int):
        """Jittable: uint8 [h, num_digits * w, 3], the number left-aligned (blank-padded)."""
        codes = number_codes(value, num_digits)
        digits = jnp.where(codes >= 0, codes - (ord("0") - FIRST_CHAR), self.BLANK)
        return grid_from_atlas(jnp.asarray(self.tiles), digits[None, :])


@functools.cache
def digit_tiles(px: int, color, background, stroke: int = 0) -> DigitTiles:
    """Build (once per style) the `DigitTiles` of Pillow's bundled font at `px` pixels. Cells
    are line boxes (see `text_alpha(..., crop=False)`), so digits share the baseline of any
    static text drawn as a line box at the same height."""
    lines = [text_alpha(str(d), px, stroke, crop=False) for d in range(10)]
    width = max(a.shape[1] for a in lines)
    cells = [
        np.pad(a, ((0, 0), ((width - a.shape[1]) // 2, width - a.shape[1] - (width - a.shape[1]) // 2))) for a in lines
    ]
    alpha = np.stack(cells + [np.zeros_like(cells[0])])[..., None]
    color, background = np.asarray(color, np.float32), np.asarray(background, np.float32)
    tiles = np.clip(np.round(background * (1 - alpha) + color * alpha), 0, 255).astype(np.uint8)
    return DigitTiles(tiles=tiles, height=alpha.shape[1], width=width)


def text_alpha(text: str, px: int, stroke: int = 0, crop: bool = True) -> np.ndarray:
    """Host: the anti-aliased alpha mask of one line of static text, for text fixed at
    construction (tile numbers, labels, prefixes); dynamic text goes through `DigitTiles`
    or `text_columns`. crop=True: cropped to the ink, so centring it centres the visible glyphs.
    crop=False: the whole line box (ascent + descent high, advance wide), so pieces drawn
    side by side at the same top share a baseline."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=px)
    if crop:
        left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
        origin, size = (-left, -top), (right - left, bottom - top)
    else:
        ascent, descent = font.getmetrics()
        origin, size = (stroke, stroke), (int(round(font.getlength(text))) + 2 * stroke, ascent + descent + 2 * stroke)
    img = Image.new("L", (max(1, size[0]), max(1, size[1])), 0)
    ImageDraw.Draw(img).text(origin, text, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    return np.asarray(img, np.float32) / 255.0


def coordinate_labels(
    image, count: int, first_x: float, first_y: float, pitch: float, top_y: float, left_x: float, px: int, color
):
    """Row and column indices 0..count-1 as static text: column j's label centred at
    (first_x + j * pitch, top_y), row i's at (left_x, first_y + i * pitch)."""
    for i in range(count):
        label = text_alpha(str(i), px)
        image = stamp(image, label, first_x + i * pitch, top_y, color)
        image = stamp(image, label, left_x, first_y + i * pitch, color)
    return image


@functools.cache
def _font_metrics(px: int) -> tuple[dict[str, int], int]:
    """(advance of every printable ASCII character, line height) of Pillow's bundled font at
    `px` pixels, as `glyph_atlas(px)` lays text out, without drawing the glyphs."""
    from PIL import ImageFont

    font = ImageFont.load_default(size=px)
    ascent, descent = font.getmetrics()
    return {chr(c): int(round(font.getlength(chr(c)))) for c in range(FIRST_CHAR, LAST_CHAR + 1)}, ascent + descent


def text_advance(text: str, px: int) -> int:
    """Host: pixel width of `text` laid out like `glyph_atlas(px).text_width` (sum of advances)."""
    advances = _font_metrics(px)[0]
    return sum(advances.get(ch, advances["?"]) for ch in text)


def digit_advance(px: int) -> int:
    """Host: the widest digit's advance at `px` (room for any number of that many digits)."""
    return max(text_advance(d, px) for d in "0123456789")


def line_height(px: int) -> int:
    """Host: the height of a line of text at `px` (`glyph_atlas(px).cell_h`)."""
    return _font_metrics(px)[1]


def text_width(text: str, px: int, stroke: int = 0) -> int:
    """Host: ink width in pixels of `text` at size `px`."""
    from PIL import ImageFont

    left, _, right, _ = ImageFont.load_default(size=px).getbbox(text, stroke_width=stroke)
    return right - left


def stamp(image, alpha: np.ndarray, x: float, y: float, color, align: str = "center"):
    """Composite a static host alpha mask (e.g. from `text_alpha`) onto an image at a static
    position: its centre at (x, y) for align="center", its top-left for "left". Parts outside
    the image are clipped."""
    h, w = alpha.shape
    if align == "center":
        x0, y0 = int(round(x - w / 2)), int(round(y - h / 2))
    elif align == "left":
        x0, y0 = int(round(x)), int(round(y))
    else:
        raise ValueError(f"align must be 'left' or 'center', got {align!r}")
    mask = np.zeros(image.shape[:2], np.float32)
    ys, xs = slice(max(y0, 0), min(y0 + h, mask.shape[0])), slice(max(x0, 0), min(x0 + w, mask.shape[1]))
    mask[ys, xs] = alpha[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    out = fill(image.astype(jnp.float32), jnp.asarray(mask), color)
    return to_uint8(out) if image.dtype == jnp.uint8 else out


# ---------------------------------------------------------------------------------------
# Tile palette of the G1 matching games
# ---------------------------------------------------------------------------------------

# The 16 named tile colours of G1's Shisen-Sho code (docs/envs.md, "Shisen-Sho"), in its order: Swap
# uses the first 4, Shisen-Sho the first 6; the rest are its commented-out difficulty
# extension. The names are the ones the perception text uses.
TILE_COLORS = (
    ("Red", (255, 0, 0)),
    ("Green", (0, 255, 0)),
    ("Blue", (0, 0, 255)),
    ("Yellow", (255, 255, 0)),
    ("Magenta", (255, 0, 255)),
    ("Cyan", (0, 255, 255)),
    ("Maroon", (128, 0, 0)),
    ("Dark green", (0, 128, 0)),
    ("Navy", (0, 0, 128)),
    ("Olive", (128, 128, 0)),
    ("Purple", (128, 0, 128)),
    ("Teal", (0, 128, 128)),
    ("Orange", (255, 165, 0)),
    ("Brown", (139, 69, 19)),
    ("Steel blue", (70, 130, 180)),
    ("Pink", (219, 112, 147)),
)
