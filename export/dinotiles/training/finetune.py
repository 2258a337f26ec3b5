"""Fine-tune DINOv2 on a labelled scene dataset (ImageFolder: DIR/<class>/*.jpg).

On a CPU, the first blocks stay frozen and their outputs are computed once for a few
augmented views of each image (flips, 90° rotations, colour jitter) and cached on disk;
only the last N blocks, the final LayerNorm and a linear head on CLS are trained, so an
epoch costs N/L of a forward pass. With CUDA the whole model trains on fresh augmentations.
The checkpoint is resumable; the result is a HF directory for `dinotiles export`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dinotiles.scenes.cluster import load_image, read_labelled_folder
from dinotiles.training.exporter import IMAGENET_MEAN, IMAGENET_STD
from dinotiles.training.weights import load_weights

SIZE = 224
HEADS = ("linear", "cosine")
COSINE_SCALE = 16.0  # logits = scale × cosine: a softmax over [-16, 16] can still reach ~1 for one class


@dataclass
class FinetuneConfig:
    data: Path
    weights: str
    out: Path
    classes: Sequence[str] | None = None
    per_class: int | None = None
    blocks: int = 2
    views: int = 4  # chosen on validation classes with 4 epochs (docs/scene-clustering.md, third run)
    epochs: int = 4
    batch: int = 32
    lr: float = 5e-5
    head_lr: float = 1e-3
    seed: int = 0
    head: str = "linear"
    # where the frozen blocks' outputs are cached (default: ``out/frozen_cache.npy``); runs that differ
    # only in epochs or head (a sweep's variants) can share one: the cache is keyed by its inputs
    frozen_cache: Path | None = None


class CosineHead(torch.nn.Module):
    """Class logits from the cosine between CLS and each class's weight vector (×``COSINE_SCALE``).

    A linear head lets CLS grow along directions that only help the training classes; a cosine head
    rewards only the *angle*, so classes the fine-tune never saw are left separated by angle too —
    which is what the scene clustering measures (cosine UMAP)."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(classes, dim) * dim**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cos = torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(self.weight, dim=-1).T
        return COSINE_SCALE * cos


def make_head(kind: str, dim: int, classes: int) -> torch.nn.Module:
    if kind not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {kind!r}")
    return CosineHead(dim, classes) if kind == "cosine" else torch.nn.Linear(dim, classes)


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Aerial augmentations: a random dihedral transform and mild colour jitter (uint8 [3, H, W])."""
    out = np.rot90(image, k=int(rng.integers(4)), axes=(1, 2))
    if rng.random() < 0.5:
        out = out[:, :, ::-1]
    x = out.astype(np.float32)
    x = x * rng.uniform(0.8, 1.2)  # brightness
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.8, 1.2) + mean  # contrast
    grey = x.mean(axis=0, keepdims=True)
    x = (x - grey) * rng.uniform(0.8, 1.2) + grey  # saturation
    return np.clip(x, 0, 255).astype(np.uint8)


def normalise(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def frozen_forward(model: Any, pixels: torch.Tensor, frozen: int) -> torch.Tensor:
    """Embeddings and the first ``frozen`` blocks."""
    hidden = model.embeddings(pixels)
    for layer in model.encoder.layer[:frozen]:
        hidden = layer(hidden)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return hidden


def trainable_forward(model: Any, hidden: torch.Tensor, frozen: int) -> torch.Tensor:
    """The last blocks and the final LayerNorm; returns CLS."""
    for layer in model.encoder.layer[frozen:]:
        hidden = layer(hidden)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return model.layernorm(hidden)[:, 0]


def cached_for(store: Path, key: Sequence[str]) -> bool:
    """Whether ``store`` holds the result for ``key`` (weights, settings, files): the listing beside
    it (``.txt``) is written only once the data is whole, so a run cut short or one for other inputs
    leaves none that matches and the work is done again."""
    listing = store.with_suffix(".txt")
    return store.exists() and listing.exists() and listing.read_text().splitlines() == list(key)


def forget_cached(store: Path) -> None:
    """Before ``store`` is (re)written: until `mark_cached`, it is no one's result."""
    store.with_suffix(".txt").unlink(missing_ok=True)


def mark_cached(store: Path, key: Sequence[str]) -> None:
    store.with_suffix(".txt").write_text("\n".join(key) + "\n")


def cache_frozen(model: Any, files: Sequence[Path], frozen: int, views: int, store: Path, seed: int) -> np.memmap:
    """Frozen-part outputs for ``views`` views of each image (view 0 unaugmented), float16 on disk."""
    rng = np.random.default_rng(seed)
    tokens = (SIZE // model.config.patch_size) ** 2 + 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
    shape = (views * len(files), tokens, model.config.hidden_size)
    names = [f"frozen={frozen}", f"views={views}", f"seed={seed}", *map(str, files)]
    if cached_for(store, names):
        return np.lib.format.open_memmap(store, mode="r")  # a resumed run: the same images, views and seed
    forget_cached(store)
    cache = np.lib.format.open_memmap(store, mode="w+", dtype=np.float16, shape=shape)
    batch = 16
    with torch.no_grad():
        for v in range(views):
            for start in tqdm(range(0, len(files), batch), desc=f"caching frozen blocks, view {v + 1}/{views}"):
                imgs = [load_image(p, SIZE) for p in files[start : start + batch]]
                if v:
                    imgs = [augment(im, rng) for im in imgs]
                hidden = frozen_forward(model, normalise(np.stack(imgs)), frozen)
                cache[v * len(files) + start : v * len(files) + start + len(imgs)] = hidden.numpy().astype(np.float16)
    cache.flush()
    mark_cached(store, names)
    return cache


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Train (CPU: last blocks on cached views; CUDA: everything), then write the HF directory and a report."""
    torch.manual_seed(cfg.seed)
    files, labels, names = read_labelled_folder(cfg.data, cfg.classes, cfg.per_class, cfg.seed)
    model = load_weights(cfg.weights).model
    layers = model.config.num_hidden_layers
    if not 1 <= cfg.blocks <= layers:
        raise ValueError(f"--blocks must be between 1 and {layers}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    head = make_head(cfg.head, model.config.hidden_size, len(names))
    rng = np.random.default_rng(cfg.seed)
    if torch.cuda.is_available():
        device, blocks, views = torch.device("cuda"), layers, 0
        model, head = model.to(device), head.to(device)
        params = list(model.parameters())
        targets = torch.from_numpy(labels).to(device)

        def logits_for(idx: np.ndarray) -> torch.Tensor:
            images = np.stack([augment(load_image(files[i], SIZE), rng) for i in idx])
            with torch.autocast("cuda", dtype=torch.bfloat16):
                cls = model(pixel_values=normalise(images).to(device)).last_hidden_state[:, 0]
            return head(cls.float())
    else:
        device, blocks, views = torch.device("cpu"), cfg.blocks, cfg.views
        frozen = layers - blocks
        for p in model.parameters():
            p.requires_grad = False
        params = [*model.encoder.layer[frozen:].parameters(), *model.layernorm.parameters()]
        for p in params:
            p.requires_grad = True
        store = cfg.frozen_cache or cfg.out / "frozen_cache.npy"
        cache = cache_frozen(model, files, frozen, views, store, cfg.seed)
        targets = torch.from_numpy(np.tile(labels, views))

        def logits_for(idx: np.ndarray) -> torch.Tensor:
            hidden = torch.from_numpy(np.asarray(cache[np.sort(idx)], dtype=np.float32))
            return head(trainable_forward(model, hidden, frozen))

    optim = torch.optim.AdamW(
        [{"params": params, "lr": cfg.lr}, {"params": head.parameters(), "lr": cfg.head_lr}], weight_decay=0.05
    )
    history = train(cfg, model, head, optim, targets, logits_for, device)
    weights_dir = cfg.out / "weights"
    model.eval().cpu().save_pretrained(str(weights_dir))
    report = {
        "classes": names,
        "images": len(files),
        "views": views,
        "blocks_trained": blocks,
        "head": cfg.head,
        "device": device.type,
        "history": history,
        "weights": str(weights_dir),
        "source_weights": cfg.weights,
    }
    (cfg.out / "finetune.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def train(
    cfg: FinetuneConfig,
    model: Any,
    head: torch.nn.Module,
    optim: torch.optim.Optimizer,
    targets: torch.Tensor,
    logits_for: Any,
    device: torch.device,
) -> list[dict[str, float]]:
    """Epochs of cross-entropy on the head; a checkpoint after each, resumed from if present."""
    ckpt_path = cfg.out / "checkpoint.pt"
    start_epoch, history = 0, []
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False, map_location=device)
        if ckpt.get("head_kind", "linear") != cfg.head:  # the head's weights would not load: say so, not a traceback
            raise ValueError(
                f"{cfg.out} holds a fine-tune with a {ckpt.get('head_kind', 'linear')} head; "
                f"resume it with --head {ckpt.get('head_kind', 'linear')} or start in a new --out"
            )
        if ckpt.get("samples", len(targets)) != len(targets):  # other images or views: not this run's state
            raise ValueError(
                f"{cfg.out} holds a fine-tune on {ckpt['samples']} samples, this one has {len(targets)} "
                "(other images, classes or views); start it in a new --out"
            )
        model.load_state_dict(ckpt["model"])
        head.load_state_dict(ckpt["head"])
        optim.load_state_dict(ckpt["optim"])
        start_epoch, history = ckpt["epoch"], ckpt["history"]
    rng = np.random.default_rng(cfg.seed + start_epoch)
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        order = rng.permutation(len(targets))
        losses, correct = [], 0
        for start in tqdm(range(0, len(order), cfg.batch), desc=f"epoch {epoch + 1}/{cfg.epochs} ({device.type})"):
            idx = np.sort(order[start : start + cfg.batch])
            logits = logits_for(idx)
            loss = torch.nn.functional.cross_entropy(logits, targets[idx])
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(loss.item())
            correct += int((logits.argmax(1) == targets[idx]).sum())
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "train_acc": correct / len(order),
                "first_batch_loss": losses[0],
                "last_batch_loss": losses[-1],
            }
        )
        state = {"model": model.state_dict(), "head": head.state_dict(), "optim": optim.state_dict()}
        extra = {"epoch": epoch + 1, "history": history, "head_kind": cfg.head, "samples": len(targets)}
        torch.save({**state, **extra}, ckpt_path)
    return history
