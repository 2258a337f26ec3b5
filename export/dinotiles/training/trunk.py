"""Scene vectors of many fine-tunes of one model, paying for their shared frozen blocks once.

A CPU fine-tune (`training.finetune`) trains only the last B blocks and the final LayerNorm: its first
L − B blocks are the base model's, bit for bit. The protocol encodes the same held-out images with
the base model and with one fine-tune per split (and per sweep variant), each at four quarter turns;
through the whole network that was the protocol's largest cost. Here the first L − B blocks' outputs
are computed once per image and turn and stored as float16 on disk (the precision the fine-tune itself
trains on), and each model then runs only its last B blocks over them: B / L of the work per model.

The vectors are the CLS token after the final LayerNorm, as the exported ONNX encoder gives it
(`tests/test_scenes.py` checks the two agree). A model whose first blocks differ from the base's (a
CUDA fine-tune trains all of them) is refused, not silently mis-encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dinotiles.scenes.cluster import load_image, rotated
from dinotiles.training.finetune import (
    SIZE,
    cached_for,
    forget_cached,
    frozen_forward,
    mark_cached,
    normalise,
    trainable_forward,
)
from dinotiles.training.weights import load_weights

BATCH = 16


class FrozenBlocksDiffer(ValueError):
    """The model's first blocks are not the base's: the shared frozen outputs do not apply to it."""


def _listing(weights: str, frozen: int, turns: int, files: Sequence[Path]) -> list[str]:
    return [f"weights={weights}", f"frozen={frozen}", f"turns={turns}", *map(str, files)]


def trunk_views(weights: str, files: Sequence[Path], frozen: int, store: Path, turns: int = 4) -> np.ndarray:
    """[turns, N, tokens, D] float16 (memory-mapped): the first ``frozen`` blocks' output for every file
    turned 0, 1, … quarter turns. Cached at ``store`` and keyed by the weights, ``frozen``, ``turns`` and
    the file list; an interrupted run starts again (the file is written whole before it is listed)."""
    names = _listing(weights, frozen, turns, files)
    if cached_for(store, names):
        return np.lib.format.open_memmap(store, mode="r")
    forget_cached(store)
    model = load_weights(weights).model.eval()
    if not 0 <= frozen < model.config.num_hidden_layers:
        raise ValueError(f"frozen blocks must be 0 to {model.config.num_hidden_layers - 1}, got {frozen}")
    tokens = (SIZE // model.config.patch_size) ** 2 + 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
    store.parent.mkdir(parents=True, exist_ok=True)
    shape = (turns, len(files), tokens, model.config.hidden_size)
    part = store.with_name(f"{store.stem}.part.npy")  # written beside, then moved over the store whole
    cache = np.lib.format.open_memmap(part, mode="w+", dtype=np.float16, shape=shape)
    with torch.no_grad():
        for start in tqdm(range(0, len(files), BATCH), desc=f"frozen blocks, {turns} turns", unit="batch"):
            images = np.stack([load_image(p, SIZE) for p in files[start : start + BATCH]])
            for k in range(turns):
                hidden = frozen_forward(model, normalise(rotated(images, k)), frozen)
                cache[k, start : start + len(images)] = hidden.numpy().astype(np.float16)
    cache.flush()
    del cache
    part.replace(store)
    mark_cached(store, names)
    return np.lib.format.open_memmap(store, mode="r")


def same_frozen_blocks(model: Any, base: Any, frozen: int) -> bool:
    """Whether ``model``'s embeddings and first ``frozen`` blocks are ``base``'s, exactly."""
    parts = [(model.embeddings, base.embeddings)]
    parts += [(model.encoder.layer[i], base.encoder.layer[i]) for i in range(frozen)]
    for mine, theirs in parts:
        a, b = mine.state_dict(), theirs.state_dict()
        if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
            return False
    return True


def head_views(weights: str, base_weights: str, trunk: np.ndarray, frozen: int, rows: Sequence[int]) -> np.ndarray:
    """[turns, len(rows), D] float32: CLS vectors of ``weights`` for the trunk's ``rows``, running only
    the blocks after ``frozen`` (refused when the model's first blocks are not the base's)."""
    model = load_weights(weights).model.eval()
    if weights != base_weights and not same_frozen_blocks(model, load_weights(base_weights).model, frozen):
        raise FrozenBlocksDiffer(
            f"{weights}: its first {frozen} blocks differ from {base_weights}'s, so the shared frozen "
            "outputs do not apply (encode it whole)"
        )
    index = np.asarray(rows)
    out = np.empty((trunk.shape[0], len(index), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for k in range(trunk.shape[0]):
            for start in tqdm(range(0, len(index), 4 * BATCH), desc=f"last blocks, turn {k}", unit="batch"):
                pick = index[start : start + 4 * BATCH]
                hidden = torch.from_numpy(np.asarray(trunk[k, pick], dtype=np.float32))
                out[k, start : start + len(pick)] = trainable_forward(model, hidden, frozen).numpy()
    return out
