"""3-axis M-RoPE position ids on the host (numpy), with transformers' `get_rope_index` semantics.

Per row, only tokens with attention_mask 1 are walked (left or any other padding is skipped):
* a text run gets consecutive positions, identical on the (t, h, w) axes;
* a run of image-pad tokens is one image: with merged grid (gt, gh/m, gw/m) and start position s,
  t = s + frame, h = s + row, w = s + col (row-major), and the next token resumes at
  s + max(gh, gw) / m;
* padded slots get position 0 (as transformers leaves them) and must be masked by the caller;
* rope_delta = (max position + 1) - number of valid tokens; a decode token that follows n valid tokens
  gets position n + rope_delta on all three axes.

Images are consumed from `image_grid_thw` in order across the whole batch (row 0 first), as in
transformers. Worked examples: docs/model.md, "Positions".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from g1jax.constants import MERGE_SIZE


def get_rope_index(
    input_ids,
    image_grid_thw: Sequence[Sequence[int]] | np.ndarray | None,
    attention_mask=None,
    *,
    image_token_id: int,
    vision_start_token_id: int | None = None,
    spatial_merge_size: int = MERGE_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (positions int32 [3, B, S], rope_deltas int32 [B]).

    `vision_start_token_id` is only used to check the prompt layout: when given, every image run
    must directly follow a vision-start token (what the chat template emits).
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {ids.shape}")
    batch, seq = ids.shape
    if attention_mask is None:
        mask = np.ones((batch, seq), dtype=bool)
    else:
        mask = np.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
        mask = mask.astype(bool)
    grids = (
        [] if image_grid_thw is None else [tuple(int(x) for x in g) for g in np.asarray(image_grid_thw).reshape(-1, 3)]
    )
    m = int(spatial_merge_size)
    for k, (t, h, w) in enumerate(grids):
        if t < 1 or h % m or w % m or h < m or w < m:
            raise ValueError(f"image_grid_thw[{k}] = {(t, h, w)} is not a valid grid for spatial_merge_size {m}")

    positions = np.zeros((3, batch, seq), dtype=np.int64)
    deltas = np.zeros((batch,), dtype=np.int64)
    next_image = 0
    for b in range(batch):
        valid = np.flatnonzero(mask[b])
        if valid.size == 0:
            raise ValueError(f"row {b} has no valid tokens (attention_mask is all zero)")
        row = ids[b, valid]
        is_image = row == image_token_id
        row_pos = np.zeros((3, valid.size), dtype=np.int64)
        current = 0
        i = 0
        while i < valid.size:
            j = i
            while j < valid.size and is_image[j] == is_image[i]:
                j += 1
            if not is_image[i]:
                row_pos[:, i:j] = current + np.arange(j - i)
                current += j - i
            else:
                if next_image >= len(grids):
                    raise ValueError(
                        f"row {b} has an image run at valid token {i} but image_grid_thw lists only "
                        f"{len(grids)} image(s)"
                    )
                t, h, w = grids[next_image]
                gh, gw = h // m, w // m
                if j - i != t * gh * gw:
                    raise ValueError(
                        f"row {b}: image run of {j - i} <|image_pad|> tokens at valid token {i} does not "
                        f"match image_grid_thw[{next_image}] = {(t, h, w)} -> {t * gh * gw} tokens"
                    )
                if vision_start_token_id is not None and (i == 0 or row[i - 1] != vision_start_token_id):
                    raise ValueError(
                        f"row {b}: image run at valid token {i} is not preceded by vision_start "
                        f"token {vision_start_token_id}"
                    )
                tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
                row_pos[0, i:j] = current + tt.reshape(-1)
                row_pos[1, i:j] = current + hh.reshape(-1)
                row_pos[2, i:j] = current + ww.reshape(-1)
                current += max(gh, gw)
                next_image += 1
            i = j
        positions[:, b, valid] = row_pos
        deltas[b] = row_pos.max() + 1 - valid.size
    if next_image != len(grids):
        raise ValueError(f"image_grid_thw lists {len(grids)} image(s) but input_ids contain {next_image} image run(s)")
    return positions.astype(np.int32), deltas.astype(np.int32)
