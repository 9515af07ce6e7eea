"""The built-in captioned dataset: coloured shapes on backgrounds, described in words.

Images are small RGB pictures of one or two shapes with continuous jitter in position, size and
colour; captions come from a finite grammar, so they repeat and the text encoder runs once per
distinct caption. Two styles share the grammar: `"train"` (used for the train and val splits) and
`"ood"`, an out-of-distribution evaluation set with another palette of the same colour words,
noisy striped backgrounds and shapes drawn smaller ("small") or larger ("large") than in training.

`write_builtin_dataset` writes it once as webdataset shards with cached text features, described by
a `dataset.json` (`scaling.dataset_info.DatasetInfo`, as any dataset a study trains on). Shard
sample format:
`__key__`, `png` (RGB) or `latent.npy` (float16 [C, H, W]), `txt` (caption),
`text.npy` (float16 [text_len, text_dim]) and `mask.npy` (bool [text_len]).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import webdataset as wds
from PIL import Image

from scaling.dataset_info import DatasetInfo, ShardInfo
from scaling.text import DEFAULT_TEXT_ENCODER, TextEncoder

Style = Literal["train", "ood"]
SPLITS = ("train", "val", "ood")
GENERATOR = "builtin-shapes"
GENERATOR_VERSION = 1  # bump when images or captions change, so old datasets are not reused

SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")
POSITIONS = {  # words -> centre (x, y) as a fraction of the side; y grows downwards
    "at the top left": (0.28, 0.28), "at the top right": (0.72, 0.28),
    "at the bottom left": (0.28, 0.72), "at the bottom right": (0.72, 0.72),
    "in the center": (0.5, 0.5),
}
RELATIONS = ("left of", "above")
PALETTES = {  # the same colour words drawn in other shades out of distribution
    "train": {"red": (215, 40, 40), "orange": (245, 140, 20), "yellow": (240, 220, 40),
              "green": (40, 170, 60), "blue": (40, 80, 225), "purple": (140, 50, 180)},
    "ood": {"red": (150, 20, 70), "orange": (205, 105, 70), "yellow": (205, 195, 120),
            "green": (110, 205, 150), "blue": (90, 160, 245), "purple": (205, 130, 225)},
}
BACKGROUNDS = {
    "train": {"black": (15, 15, 15), "white": (240, 240, 240), "gray": (128, 128, 128),
              "brown": (110, 70, 40)},
    "ood": {"black": (45, 40, 55), "white": (215, 220, 200), "gray": (100, 110, 120),
            "brown": (140, 95, 60)},
}
RADII = {  # shape "radius" ranges as a fraction of the image side, per style and size word
    "train": {"small": (0.10, 0.15), "large": (0.20, 0.27), "pair": (0.11, 0.17)},
    "ood": {"small": (0.07, 0.10), "large": (0.28, 0.33), "pair": (0.08, 0.12)},
}
TWO_SHAPES = 0.25  # fraction of pictures with two shapes
POSITION_JITTER = 0.06
COLOUR_JITTER = 12  # uniform +- per RGB channel
SUPERSAMPLE = 4  # anti-aliasing makes coverage, hence pixels, continuous in position and size

# Slots of the two caption templates; every caption is one option per slot joined by spaces.
_COLOURS, _BACKGROUNDS = tuple(PALETTES["train"]), tuple(BACKGROUNDS["train"])
ONE_SHAPE = (("a",), SIZES, _COLOURS, SHAPES, tuple(POSITIONS), ("on a",), _BACKGROUNDS,
             ("background",))
TWO = (("a", "an"), _COLOURS, SHAPES, RELATIONS, ("a", "an"), _COLOURS, SHAPES, ("on a",),
       _BACKGROUNDS, ("background",))
TEMPLATES = (ONE_SHAPE, TWO)


@dataclass(frozen=True)
class Shape:
    kind: str
    rgb: tuple[float, float, float]
    x: float  # centre, fraction of the side
    y: float
    r: float  # radius, fraction of the side


@dataclass(frozen=True)
class Layout:
    """One picture before rendering: its caption and what it shows."""

    caption: str
    background: tuple[float, float, float]
    shapes: tuple[Shape, ...]


def _colour(rng: np.random.Generator, rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(float(c) for c in np.clip(np.array(rgb) + rng.uniform(-COLOUR_JITTER,
                                                                       COLOUR_JITTER, 3), 0, 255))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def draw_layout(rng: np.random.Generator, style: Style = "train") -> Layout:
    """A random picture description drawn from the grammar, with continuous jitter."""
    palette, backgrounds, radii = PALETTES[style], BACKGROUNDS[style], RADII[style]
    bg = str(rng.choice(tuple(backgrounds)))
    if rng.random() >= TWO_SHAPES:
        size, colour, kind = rng.choice(SIZES), rng.choice(tuple(palette)), rng.choice(SHAPES)
        where = str(rng.choice(tuple(POSITIONS)))
        cx, cy = np.array(POSITIONS[where]) + rng.uniform(-POSITION_JITTER, POSITION_JITTER, 2)
        shapes = (Shape(str(kind), _colour(rng, palette[colour]), float(cx), float(cy),
                        float(rng.uniform(*radii[size]))),)
        caption = f"a {size} {colour} {kind} {where} on a {bg} background"
    else:
        colours = rng.choice(tuple(palette), 2)
        kinds = rng.choice(SHAPES, 2)
        relation = str(rng.choice(RELATIONS))
        along = rng.uniform([0.2, 0.65], [0.35, 0.8])  # first shape before the second
        across = rng.uniform(0.3, 0.7, 2)
        xs, ys = (along, across) if relation == "left of" else (across, along)
        shapes = tuple(Shape(str(k), _colour(rng, palette[c]), float(x), float(y),
                             float(rng.uniform(*radii["pair"])))
                       for k, c, x, y in zip(kinds, colours, xs, ys, strict=True))
        caption = (f"{_article(colours[0])} {colours[0]} {kinds[0]} {relation} "
                   f"{_article(colours[1])} {colours[1]} {kinds[1]} on a {bg} background")
    return Layout(caption, _colour(rng, backgrounds[bg]), shapes)


def _coverage(shape: Shape, grid: np.ndarray, size: int) -> np.ndarray:
    """Fraction of each pixel the shape covers, [size, size], from a supersampled inside test."""
    dx, dy = grid[None, :] - shape.x, grid[:, None] - shape.y
    r = shape.r
    if shape.kind == "circle":
        inside = dx * dx + dy * dy <= r * r
    elif shape.kind == "square":
        inside = np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    elif shape.kind == "diamond":
        inside = np.abs(dx) + np.abs(dy) <= 1.2 * r
    elif shape.kind == "triangle":  # apex up, centroid at the centre
        inside = (dy <= 0.5 * r) & (np.abs(dx) <= (dy + r) / np.sqrt(3))
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r}")
    ss = SUPERSAMPLE
    return inside.reshape(size, ss, size, ss).mean(axis=(1, 3), dtype=np.float32)


def render(layout: Layout, size: int = 32, style: Style = "train",
           rng: np.random.Generator | None = None) -> np.ndarray:
    """The picture as uint8 RGB [size, size, 3]; `ood` adds noise and stripes to the background
    (drawn from `rng`)."""
    grid = (np.arange(size * SUPERSAMPLE, dtype=np.float32) + 0.5) / (size * SUPERSAMPLE)
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = layout.background
    if style == "ood":
        if rng is None:
            raise ValueError("render(style='ood') needs rng for the background texture")
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(3, 8), rng.uniform(0, 2 * np.pi)
        stripes = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
        image += (22 * stripes)[..., None] + rng.normal(0, 14, (size, size, 3))
    for shape in layout.shapes:
        alpha = _coverage(shape, grid, size)[..., None]
        image = image * (1 - alpha) + np.asarray(shape.rgb, dtype=np.float32) * alpha
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def iter_samples(style: Style, n: int, *, image_size: int = 32,
                 seed: int = 0) -> Iterator[tuple[np.ndarray, str]]:
    """`n` (uint8 RGB [H, W, 3] image, caption) pairs, the same for the same arguments."""
    layouts = np.random.default_rng([seed, 0])
    textures = np.random.default_rng([seed, 1])
    for _ in range(n):
        layout = draw_layout(layouts, style)
        yield render(layout, image_size, style, textures), layout.caption


def longest_caption_tokens(encoder: TextEncoder) -> int:
    """Tokens (special tokens included) of the longest caption the grammar can produce.

    WordPiece splits on spaces first, so a caption's token count is the sum over its words: the
    longest caption takes each slot's longest option."""
    def ntok(text: str) -> int:
        return len(encoder.tokenizer.tokenize(text))

    longest = [" ".join(max(slot, key=ntok) for slot in template) for template in TEMPLATES]
    return int(encoder.token_lengths(longest).max())


# ---------------------------------------------------------------------------------------------
# dataset.json


# ---------------------------------------------------------------------------------------------
# writer


def _log(message: str) -> None:
    print(f"builtin data: {message}", file=sys.stderr, flush=True)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class DatasetConflict(FileExistsError):
    """The data path already holds something else than the dataset asked for; nothing is
    overwritten."""


def _reuse(root: Path, params: dict) -> DatasetInfo | None:
    """The dataset already at `root` if it was written with `params`; None if there is none."""
    if not (root / "dataset.json").exists():
        if root.exists() and any(root.iterdir()):
            raise DatasetConflict(f"{root} exists, is not empty and holds no dataset.json: "
                                  "choose another data path")
        return None
    info = DatasetInfo.load(root)
    if info.params != params:
        diff = sorted(k for k in params.keys() | info.params.keys()
                      if params.get(k) != info.params.get(k))
        raise DatasetConflict(
            f"{root} holds a dataset written with other parameters ("
            + ", ".join(f"{k}: {info.params.get(k)!r} there, {params.get(k)!r} asked" for k in diff)
            + "): remove it or choose another data path")
    damaged = [url for split in info.splits
               for url, shard in zip(info.urls(split), info.splits[split], strict=True)
               if not os.path.exists(url) or os.path.getsize(url) != shard.bytes]
    if damaged:
        raise FileNotFoundError(f"{root}/dataset.json lists shards that are missing or of the "
                                f"wrong size: {damaged[:3]}{' ...' if len(damaged) > 3 else ''}; "
                                "remove the directory to regenerate it")
    return info


def write_builtin_dataset(root: str | Path, *, image_size: int = 32, train_samples: int = 16384,
                          val_samples: int = 1024, ood_samples: int = 512,
                          samples_per_shard: int = 2048, seed: int = 0,
                          encoder: str = DEFAULT_TEXT_ENCODER,
                          text_len: int | None = None) -> DatasetInfo:
    """Write the built-in dataset under `root` once; later calls with the same arguments reuse it.

    `text_len` (tokens) defaults to the grammar's longest caption under `encoder`, so no caption
    is truncated. Everything is written into a temporary sibling directory that is renamed to
    `root` only when complete, so an interrupted run never leaves a dataset that looks whole.
    """
    for name, value, least in (("image_size", image_size, 8), ("train_samples", train_samples, 1),
                               ("val_samples", val_samples, 0), ("ood_samples", ood_samples, 0),
                               ("samples_per_shard", samples_per_shard, 1)):
        if value < least:
            raise ValueError(f"{name}={value} must be at least {least}")
    if text_len is not None and text_len < 2:
        raise ValueError(f"text_len={text_len} must be at least 2")
    root = Path(root).expanduser().resolve()
    params = {"generator": GENERATOR, "version": GENERATOR_VERSION, "image_size": image_size,
              "train_samples": train_samples, "val_samples": val_samples,
              "ood_samples": ood_samples, "samples_per_shard": samples_per_shard, "seed": seed,
              "encoder": encoder, "text_len": text_len}
    if (info := _reuse(root, params)) is not None:
        _log(f"reusing {root} ({info.content_hash[:12]})")
        return info

    started = time.perf_counter()
    counts = {"train": train_samples, "val": val_samples, "ood": ood_samples}
    styles: dict[str, Style] = {"train": "train", "val": "train", "ood": "ood"}
    rngs = {split: (np.random.default_rng([seed, i, 0]), np.random.default_rng([seed, i, 1]))
            for i, split in enumerate(SPLITS)}
    layouts = {split: [draw_layout(rngs[split][0], styles[split]) for _ in range(counts[split])]
               for split in SPLITS}
    captions = [layout.caption for split in SPLITS for layout in layouts[split]]

    probe = TextEncoder.load(encoder)
    # The grammar bound assumes a caption's tokens are the sum of its words' (true for WordPiece
    # and CLIP's BPE); the captions actually drawn guard other tokenizers.
    longest = max(longest_caption_tokens(probe),
                  int(probe.token_lengths(sorted(set(captions))).max()))
    if text_len is None:
        text_len = longest
    elif text_len < longest:
        raise ValueError(f"text_len={text_len} would truncate the longest built-in caption "
                         f"({longest} tokens under {encoder})")
    text_encoder = TextEncoder(encoder, probe.tokenizer, probe.model, text_len, probe.device)
    distinct = len(set(captions))
    _log(f"encoding {distinct} distinct captions of {len(captions)} with {encoder} "
         f"({text_len} tokens)")
    features, masks = text_encoder.encode(captions)
    _log(f"encoded in {time.perf_counter() - started:.1f} s")

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is read by other users' workers
    try:
        splits: dict[str, tuple[ShardInfo, ...]] = {}
        row = 0
        for split in SPLITS:
            shards = []
            for first in range(0, counts[split], samples_per_shard):
                name = f"{split}-{len(shards):06d}.tar"
                n = min(samples_per_shard, counts[split] - first)
                with wds.TarWriter(str(tmp / name), encoder=False, mtime=0) as sink:
                    for i in range(first, first + n):
                        layout = layouts[split][i]
                        image = render(layout, image_size, styles[split], rngs[split][1])
                        sink.write({"__key__": f"{split}_{i:08d}", "png": _png(image),
                                    "txt": layout.caption.encode(),
                                    "text.npy": _npy(features[row]), "mask.npy": _npy(masks[row])})
                        row += 1
                shards.append(ShardInfo(name, n, (tmp / name).stat().st_size,
                                        _sha256(tmp / name)))
            splits[split] = tuple(shards)
            _log(f"wrote {split}: {counts[split]} samples in {len(shards)} shards")
        content = hashlib.sha256("".join(f"{s.name}:{s.sha256}\n" for v in splits.values()
                                         for s in v).encode()).hexdigest()
        info = DatasetInfo(root, "png", image_size, 3, encoder, text_encoder.dim, text_len,
                           splits, params, f"sha256:{content}")
        (tmp / "dataset.json").write_text(json.dumps(info.to_json(), indent=1) + "\n")
        _install(tmp, root, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log(f"dataset ready at {root} in {time.perf_counter() - started:.1f} s")
    return DatasetInfo.load(root)


def _install(tmp: Path, root: Path, params: dict) -> None:
    """Move the finished dataset into place; if another writer got there first, keep theirs."""
    if root.exists() and not any(root.iterdir()):
        root.rmdir()
    try:
        os.rename(tmp, root)
    except OSError:
        if _reuse(root, params) is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
