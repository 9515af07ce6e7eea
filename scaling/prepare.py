"""Data preparation: image-caption webdataset shards in, training shards out.

Input samples hold an image (`jpg`, `jpeg`, `png` or `webp`) and a caption (`txt`, `caption` or
`text`). Each image is centre-cropped to a square and resized to `image_size` pixels (PIL bicubic);
it is stored as image latents when an autoencoder is configured (diffusers `AutoencoderKL`, the
mean of its posterior times its `scaling_factor`, float16 [C, h, w] as `latent.npy`), else as
`png`. Captions are encoded once by a frozen transformers encoder (`text.npy`, `mask.npy`, see
`scaling.text`). Held-out splits of a latent dataset also keep the resized `png`: FID compares
generated images with real ones, not with autoencoder reconstructions.

Splits: `train` and `val` from the source, a sample going to `val` when the hash of its key falls
below `val_fraction` (stable under re-sharding and re-ordering), and `ood` from separate shards
(e.g. COCO) when given. Bad input never stops the run and is never dropped silently: samples
with an unreadable image or a missing caption and unreadable shards are skipped and counted by
reason, in the log and in `dataset.json` (`params.skipped`).

This module runs in-process (`prepare_dataset`); `search.prepare` runs the same `Preparer` on a
Ray cluster through Ray Data. Both end in `finish_dataset`, which names the shards, hashes them
and writes `dataset.json` (shard counts, resolution, encoder names, a content hash over the
samples, independent of how they were sharded).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image, ImageOps

from scaling.builtin_data import DatasetInfo, ShardInfo
from scaling.text import DEFAULT_TEXT_ENCODER, TextEncoder

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEYS = ("txt", "caption", "text")
SPLITS = ("train", "val", "ood")

Sample = dict[str, bytes | str]


@dataclass(frozen=True)
class PrepareConfig:
    """How to turn image-caption shards into training shards."""

    image_size: int = 32  # pixels, after centre crop
    text_encoder: str = DEFAULT_TEXT_ENCODER
    text_len: int = 32  # text tokens kept per caption (longer captions are truncated)
    autoencoder: str | None = None  # diffusers AutoencoderKL directory or hub name
    val_fraction: float = 0.05  # share of source samples held out as `val`, by key hash
    samples_per_shard: int = 2048
    batch_size: int = 64  # samples encoded together

    def __post_init__(self) -> None:
        for name, least in (("image_size", 8), ("text_len", 2), ("samples_per_shard", 1),
                            ("batch_size", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"{name}={getattr(self, name)} must be at least {least}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction} is not in [0, 1)")


def _log(message: str) -> None:
    print(f"data prepare: {message}", file=sys.stderr, flush=True)


def source_urls(source: str) -> list[str]:
    """Shard URLs of a source: a directory (its .tar files), a glob, a brace pattern
    (`shards-{000..009}.tar`), or one shard URL."""
    path = Path(source).expanduser()
    if path.is_dir():
        urls = sorted(str(p) for p in path.glob("*.tar"))
        if not urls:
            raise FileNotFoundError(f"{source}: directory holds no .tar shards")
        return urls
    if "{" in source:
        return list(wds.shardlists.expand_urls(source))
    if any(c in source for c in "*?[") and "://" not in source:
        urls = sorted(glob.glob(os.path.expanduser(source)))
        if not urls:
            raise FileNotFoundError(f"{source}: no shard matches")
        return urls
    if "://" not in source and not source.startswith("pipe:") and not path.exists():
        raise FileNotFoundError(f"{source}: no such shard or directory")
    return [source]


def split_of(key: str, val_fraction: float) -> str:
    """`val` for a stable `val_fraction` of keys (by SHA-256), else `train`."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "val" if h < val_fraction else "train"


def load_autoencoder(name_or_path: str, device: str = "cpu"):
    """A diffusers `AutoencoderKL` from a local directory or a hub name (the `prepare` extra)."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as exc:
        raise RuntimeError("an autoencoder needs diffusers: pip install 'dit-scaling[prepare]'"
                           ) from exc
    path = Path(name_or_path).expanduser()
    local = path.exists()
    if not local and name_or_path.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"autoencoder {name_or_path!r}: no such directory")
    try:
        vae = AutoencoderKL.from_pretrained(str(path) if local else name_or_path,
                                            local_files_only=local)
    except Exception as exc:
        raise RuntimeError(f"autoencoder {name_or_path!r} could not be loaded "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                           "; the model hub may be unreachable: pass a local directory") from exc
    return vae.to(device).eval().requires_grad_(False)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _text(value: bytes | str) -> str:
    return (value.decode("utf-8") if isinstance(value, bytes) else str(value)).strip()


class Preparer:
    """Encodes batches of raw samples; loads its encoders once (one per Ray Data actor)."""

    def __init__(self, cfg: PrepareConfig, device: str | None = None):
        import torch

        self.cfg = cfg
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.text = TextEncoder.load(cfg.text_encoder, cfg.text_len, self.device)
        self.vae = load_autoencoder(cfg.autoencoder, self.device) if cfg.autoencoder else None

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor) if self.vae is not None else 1.0

    def decode(self, sample: Sample) -> tuple[np.ndarray, str] | str:
        """(uint8 [S, S, 3] image, caption), or the reason the sample is skipped."""
        caption_key = next((k for k in CAPTION_KEYS if sample.get(k) is not None), None)
        image_key = next((k for k in IMAGE_KEYS if sample.get(k) is not None), None)
        if image_key is None:
            return "no image"
        caption = _text(sample[caption_key]) if caption_key else ""
        if not caption:
            return "missing caption"
        try:
            with Image.open(io.BytesIO(sample[image_key])) as im:
                im = ImageOps.fit(im.convert("RGB"), (self.cfg.image_size,) * 2,
                                  Image.Resampling.BICUBIC)
                return np.asarray(im), caption
        except Exception:
            return "unreadable image"

    def __call__(self, samples: list[Sample], keep_pixels: bool = False
                 ) -> tuple[list[Sample], Counter]:
        """Encoded output samples and the skipped ones counted by reason."""
        import torch

        skipped: Counter = Counter()
        keys, images, captions = [], [], []
        for sample in samples:
            decoded = self.decode(sample)
            if isinstance(decoded, str):
                skipped[decoded] += 1
                continue
            keys.append(str(sample["__key__"]))
            images.append(decoded[0])
            captions.append(decoded[1])
        if not keys:
            return [], skipped
        with torch.inference_mode():
            feats, masks = self.text.encode(captions)
            latents = None
            if self.vae is not None:
                x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
                posterior = self.vae.encode(x.to(self.device)).latent_dist
                latents = (posterior.mode() * self.latent_scale).float().cpu().numpy()
        out = []
        for i, key in enumerate(keys):
            sample: Sample = {"__key__": key, "txt": captions[i], "text.npy": _npy(feats[i]),
                              "mask.npy": _npy(masks[i])}
            if latents is not None:
                sample["latent.npy"] = _npy(latents[i].astype(np.float16))
            if latents is None or keep_pixels:
                sample["png"] = _png(images[i])
            out.append(sample)
        return out, skipped


# ---------------------------------------------------------------------------------------------
# reading the source in-process


def _raw_samples(urls: Iterable[str], skipped: Counter | None,
                 keep: Callable[[str], bool] = lambda key: True) -> Iterator[Sample]:
    """Samples of the shards whose key `keep` accepts; unreadable shards are counted in
    `skipped` (pass None on a second pass over the same shards, so nothing counts twice)."""
    from scaling.data import read_shard

    for url in urls:
        try:
            for sample in read_shard(url):
                if keep(str(sample["__key__"])):
                    yield sample
        except Exception as exc:  # missing, unreadable or cut-short shard: keep what came before
            if skipped is not None:
                skipped["unreadable shard"] += 1
                _log(f"skipping the rest of {url}: {type(exc).__name__}: {exc}")


def _batches(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_split(preparer: Preparer, samples: Iterable[Sample], folder: Path, split: str,
                 keep_pixels: bool, skipped: Counter) -> int:
    cfg = preparer.cfg
    written, shard, sink = 0, 0, None
    try:
        for batch in _batches(samples, cfg.batch_size):
            out, bad = preparer(batch, keep_pixels)
            skipped.update(bad)
            for sample in out:
                if sink is None or written % cfg.samples_per_shard == 0 and written:
                    if sink is not None:
                        sink.close()
                        shard += 1
                    sink = wds.TarWriter(str(folder / f"{split}-{shard:06d}.tar"), encoder=False,
                                         mtime=0)
                sink.write({k: v.encode() if isinstance(v, str) and not k.startswith("__") else v
                            for k, v in sample.items()})
                written += 1
    finally:
        if sink is not None:
            sink.close()
    return written


def prepare_dataset(source: list[str], dst: str | Path, cfg: PrepareConfig = PrepareConfig(),
                    ood: list[str] | None = None) -> DatasetInfo:
    """Prepare `source` shards (and `ood` shards) into a new dataset at `dst`, in-process."""
    dst = check_destination(dst)
    started = time.perf_counter()
    preparer = Preparer(cfg)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    skipped: Counter = Counter()
    latent = cfg.autoencoder is not None  # held-out splits keep the pixels for FID
    try:
        # Two passes over the source, one per split; each sample is decoded in one of them.
        counts = {"train": _write_split(
            preparer, _raw_samples(source, skipped, lambda k: split_of(k, cfg.val_fraction)
                                   == "train"), tmp, "train", False, skipped)}
        if cfg.val_fraction > 0:
            counts["val"] = _write_split(
                preparer, _raw_samples(source, None, lambda k: split_of(k, cfg.val_fraction)
                                       == "val"), tmp, "val", latent, skipped)
        if ood:
            counts["ood"] = _write_split(preparer, _raw_samples(ood, skipped), tmp, "ood",
                                         latent, skipped)
        _log("wrote " + ", ".join(f"{k}: {v} samples" for k, v in counts.items()))
        info = finish_dataset(tmp, dst, cfg, source, ood or [], skipped, "in-process")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log(f"dataset ready at {dst} in {time.perf_counter() - started:.1f} s")
    return info


def check_destination(dst: str | Path) -> Path:
    """The destination as an absolute path, refusing one that already holds something."""
    dst = Path(dst).expanduser().resolve()
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst} exists and is not empty: choose a new destination")
    dst.parent.mkdir(parents=True, exist_ok=True)
    return dst


# ---------------------------------------------------------------------------------------------
# describing the result


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _sample_digest(sample: Sample) -> str:
    h = hashlib.sha256()
    for name in sorted(k for k in sample if not k.startswith("__")):
        value = sample[name]
        h.update(name.encode() + b"\0" + (value if isinstance(value, bytes) else value.encode()))
    return h.hexdigest()


def latent_scale(autoencoder: str | None) -> float:
    """The autoencoder's `scaling_factor` (latents are stored multiplied by it), from its config
    alone; 1 without an autoencoder."""
    if not autoencoder:
        return 1.0
    from diffusers import AutoencoderKL

    local = Path(autoencoder).expanduser().exists()
    config = AutoencoderKL.load_config(autoencoder, local_files_only=local)
    return float(config.get("scaling_factor", 1.0))


def finish_dataset(tmp: Path, dst: Path, cfg: PrepareConfig, source: list[str],
                   ood: list[str], skipped: Counter, engine: str) -> DatasetInfo:
    """Count, hash and describe the shards `split-NNNNNN.tar` in `tmp`, write `dataset.json`
    and move the finished dataset to `dst`."""
    from scaling.data import load_npy, read_shard

    splits: dict[str, tuple[ShardInfo, ...]] = {}
    digests: list[str] = []
    shape: tuple | None = None
    for split in SPLITS:
        shards = []
        for path in sorted(tmp.glob(f"{split}-*.tar")):
            n = 0
            for sample in read_shard(str(path)):
                n += 1
                digests.append(f"{split}/{sample['__key__']}:{_sample_digest(sample)}")
                if shape is None:
                    text = load_npy(sample["text.npy"])
                    image = load_npy(sample["latent.npy"]) if "latent.npy" in sample else None
                    shape = (text.shape[1], None if image is None else image.shape)
            shards.append(ShardInfo(path.name, n, path.stat().st_size, _sha256(path)))
        if shards:
            splits[split] = tuple(shards)
    if "train" not in splits:
        raise RuntimeError(f"no training samples survived (skipped: {dict(skipped) or 'none'}); "
                           f"check the source shards {source[:3]}")
    if skipped:
        _log("skipped " + ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())))
    content = hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()
    text_dim, latent = shape
    channels, side = (latent[0], latent[1]) if latent else (3, cfg.image_size)
    params = {"generator": "prepare", "engine": engine, **asdict(cfg),
              "pixel_size": cfg.image_size, "latent_scale": latent_scale(cfg.autoencoder),
              "source": source, "ood_source": ood, "skipped": dict(sorted(skipped.items()))}
    info = DatasetInfo(dst, "latent.npy" if latent else "png", side, channels, cfg.text_encoder,
                       text_dim, cfg.text_len, splits, params, f"sha256:{content}")
    (tmp / "dataset.json").write_text(json.dumps(info.to_json(), indent=1) + "\n")
    tmp.chmod(0o755)
    if dst.exists():
        dst.rmdir()
    os.rename(tmp, dst)
    return DatasetInfo.load(dst)
