"""Batches of (image, caption features) from webdataset shards, for training and evaluation.

Each sample holds `png` (RGB) or `latent.npy` (float16 [C, H, W]), `text.npy` (float16 [L, D]) and
`mask.npy` (bool [L]). Shards are opened with webdataset's `gopen` (local paths, `file:`, `pipe:`
and any scheme registered in `webdataset.gopen_schemes`, e.g. by `register_pyarrow_schemes`) and
read by a small tar parser of our own: on one core here webdataset's tarfile-based reader gave
4,500 samples/s and its whole pipeline with decoding about 2,500, slower than a tiny DiT trains;
ours reads 30,000-40,000 and delivers about 9,000 decoded training samples/s
(`benchmarks/data_speed.py`). Samples become numpy arrays (no per-sample torch op) and each batch
turns into tensors once. Not using webdataset's stages also sidesteps their error handling, where
a handler must be passed to every stage for a truncated shard not to raise.

Broken data never stops a run: a shard that cannot be opened or is cut short, and a sample that
does not decode, are skipped, counted in `DataStats.skipped` and warned about once per shard. Only
a stream whose shards yield nothing in a whole pass raises.
"""

from __future__ import annotations

import ast
import io
import os
import random
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

SHUFFLE_BUFFER = 2048  # samples shuffled together (about one built-in shard, ~30 MB held)
PYARROW_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


@dataclass
class Batch:
    image: Tensor  # float32 [B, C, H, W]: pixels scaled to [-1, 1], latents as stored
    text: Tensor  # float32 [B, L, D]: frozen text-encoder features, zeros at padding
    mask: Tensor  # bool [B, L]: True at caption tokens


@dataclass
class DataStats:
    """Running counts of one stream, updated in place as batches are taken.

    `samples` counts samples delivered to this rank (a training stream started at `start_batch`
    counts the skipped-over batches too); `skipped` counts unreadable shards plus undecodable
    samples; `epochs` is passes over the whole dataset (all ranks together for training), 0 while
    the dataset size is unknown (no `dataset.json` beside the shards).
    """

    samples: int = 0
    skipped: int = 0
    epochs: float = 0.0


# ---------------------------------------------------------------------------------------------
# URLs


def check_urls(urls: Iterable[str], what: str = "urls") -> list[str]:
    """The shard URLs as a list, after rejecting what webdataset would mishandle."""
    if isinstance(urls, str | Path):
        raise TypeError(f"{what} must be a list of shard URLs, not the single string {urls!r}")
    urls = list(urls)
    if not urls:
        raise ValueError(f"{what} is empty: no shards to read")
    for url in urls:
        if not isinstance(url, str | Path) or not str(url):
            raise ValueError(f"{what}: {url!r} is not a shard URL")
        if str(url).endswith("/"):  # webdataset waits forever on a directory URL
            raise ValueError(f"{what}: {url!r} ends in '/': name the .tar shards, not a directory")
    return [str(u) for u in urls]


def _open_pyarrow(url: str, mode: str = "rb", bufsize: int = 8192, *, filesystem=None,
                  **_: object) -> BinaryIO:
    from pyarrow import fs as pafs

    if mode != "rb":
        raise ValueError(f"{url}: only reading is supported, not mode {mode!r}")
    if filesystem is None:
        filesystem, path = pafs.FileSystem.from_uri(url)
    else:
        path = url.split("://", 1)[1]
    return filesystem.open_input_stream(path, buffer_size=1 << 20)


def register_pyarrow_schemes(schemes: Iterable[str] = PYARROW_SCHEMES, filesystem=None) -> None:
    """Read shard URLs of these schemes through `pyarrow.fs` (webdataset has no s3 support).

    With `filesystem=None` each URL is resolved by `pyarrow.fs.FileSystem.from_uri` (credentials
    and region from the environment, as pyarrow does); pass a configured filesystem (say an
    `S3FileSystem(endpoint_override=...)` for MinIO) to read `scheme://path` from it instead.
    Registration is per process: DataLoader workers started by fork inherit it.
    """
    for scheme in schemes:
        wds.gopen_schemes[scheme] = partial(_open_pyarrow, filesystem=filesystem)


def listed_sizes(urls: list[str]) -> dict[str, int]:
    """Samples per shard URL as the `dataset.json` beside the shards lists them (unlisted URLs,
    remote ones included, are left out)."""
    from scaling.dataset_info import DatasetInfo

    counts: dict[str, int] = {}
    local = {u: _local_path(u) for u in urls}
    for folder in {os.path.dirname(os.path.realpath(p)) for p in local.values() if p is not None}:
        if os.path.exists(os.path.join(folder, "dataset.json")):
            try:
                info = DatasetInfo.load(folder)
            except ValueError:
                continue
            for split, shards in info.splits.items():
                for url, shard in zip(info.urls(split), shards, strict=True):
                    counts[os.path.realpath(url)] = shard.samples
    return {u: counts[os.path.realpath(p)] for u, p in local.items()
            if p is not None and os.path.realpath(p) in counts}


def dataset_size(urls: list[str], listed: dict[str, int] | None = None) -> int | None:
    """Samples in these shards per the `dataset.json` beside them; None if any is not listed."""
    listed = listed_sizes(urls) if listed is None else listed
    if any(u not in listed for u in urls):
        return None
    return sum(listed[u] for u in urls)


def _local_path(url: str) -> str | None:
    if url.startswith("file:"):
        return url[len("file://"):] if url.startswith("file://") else url[len("file:"):]
    return None if "://" in url or url.startswith("pipe:") else url


# ---------------------------------------------------------------------------------------------
# reading and decoding


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").strip()
    return int(text, 8) if text else 0


def _read_exactly(stream: BinaryIO, n: int, url: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError(f"{url}: truncated tar (wanted {n} bytes, got {len(data)})")
    return data


def read_shard(url: str) -> Iterator[dict[str, bytes | str]]:
    """Samples of one tar shard, as webdataset groups them: files sharing the name up to the
    first dot of their base name form one sample (`__key__`, `__url__`, extension -> bytes).

    Raises on a missing, truncated or corrupt shard after yielding the samples before the fault
    (the one it cuts through is dropped).
    """
    stream = wds.gopen(url, "rb")
    try:
        sample: dict[str, bytes | str] | None = None
        long_name: str | None = None
        while True:
            header = stream.read(512)
            if header == b"\0" * 512:
                break
            if len(header) < 512:  # a whole tar ends with zero blocks: this one was cut short
                raise EOFError(f"{url}: truncated tar (no end-of-archive marker)")
            stored = _octal(header[148:156])
            if stored != sum(header[:148]) + 256 + sum(header[156:]):
                raise ValueError(f"{url}: corrupt tar header (bad checksum)")
            size, kind = _octal(header[124:136]), header[156:157]
            data = _read_exactly(stream, size, url)
            stream.read(-size % 512)
            if kind in (b"L", b"x"):  # GNU long name or pax header for the next member
                long_name = _long_name(kind, data, long_name)
                continue
            if kind not in (b"0", b"\0"):
                long_name = None
                continue
            name = long_name or _ustar_name(header)
            long_name = None
            base = name.rsplit("/", 1)[-1]
            if base.startswith("__") or "." not in base:  # metadata, as in webdataset
                continue
            head, _, tail = base.partition(".")
            key = name[:len(name) - len(base)] + head
            if sample is None or sample["__key__"] != key:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": url}
            sample[tail.lower()] = data
        if sample is not None:
            yield sample
    finally:
        stream.close()


def _ustar_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0].decode("utf-8")
    prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8") if header[257:262] == b"ustar" \
        else ""
    return f"{prefix}/{name}" if prefix else name


def _long_name(kind: bytes, data: bytes, previous: str | None) -> str | None:
    if kind == b"L":
        return data.split(b"\0", 1)[0].decode("utf-8")
    for record in data.decode("utf-8").splitlines():  # pax: "<len> key=value"
        key, _, value = record.partition(" ")[2].partition("=")
        if key == "path":
            return value
    return previous


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], int]] = {}


def load_npy(data: bytes) -> np.ndarray:
    """An .npy file's array without copying; headers are parsed once per distinct header."""
    if data[:6] != b"\x93NUMPY":
        raise ValueError("not an .npy file")
    start = 10 if data[6] == 1 else 12
    end = start + struct.unpack("<H" if data[6] == 1 else "<I", data[8:start])[0]
    header = data[:end]
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        meta = ast.literal_eval(data[start:end].decode("latin1"))
        if meta["fortran_order"]:
            raise ValueError("Fortran-ordered .npy is not supported")
        dtype = np.dtype(meta["descr"])
        if dtype.hasobject:
            raise ValueError("object arrays are not allowed")
        parsed = (dtype, tuple(meta["shape"]), int(np.prod(meta["shape"], dtype=np.int64)))
        if len(_NPY_HEADERS) < 4096:
            _NPY_HEADERS[header] = parsed
    dtype, shape, count = parsed
    if len(data) - end != count * dtype.itemsize:
        raise ValueError(f".npy holds {len(data) - end} bytes, its header says "
                         f"{count * dtype.itemsize}")
    return np.frombuffer(data, dtype, count, end).reshape(shape)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _rgb8_idat(data: bytes) -> tuple[int, int, bytes] | None:
    """(width, height, zlib stream) of a non-interlaced 8-bit RGB PNG whose chunk CRCs all
    check, else None (other PNGs, and anything odd, go through PIL's whole reader)."""
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 33:
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if depth != 8 or colour != 2 or interlace != 0:
        return None
    parts, pos, end = [], 8, len(data)
    while pos + 12 <= end:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        stop = pos + 8 + length
        if stop + 4 > end or zlib.crc32(data[pos + 4:stop]) != int.from_bytes(
                data[stop:stop + 4], "big"):
            return None
        if kind == b"IDAT":
            parts.append(data[pos + 8:stop])
        elif kind == b"IEND":
            return (width, height, b"".join(parts)) if parts else None
        elif kind[0] & 0x20 == 0 and kind not in (b"IHDR", b"PLTE"):
            return None  # an unknown critical chunk
        pos = stop + 4
    return None


def decode_png(data: bytes) -> np.ndarray:
    """A PNG's pixels as uint8 [H, W, 3] RGB.

    An 8-bit RGB PNG (what the built-in data writes) has its image stream decoded by PIL's zlib
    decoder directly, skipping `Image.open`'s chunk parsing in Python: 33 -> 18 us per 32 x 32
    image here, about a fifth of a batch's preparation. Any other PNG goes through `Image.open`.
    """
    parsed = _rgb8_idat(data)
    if parsed is not None:
        width, height, stream = parsed
        return np.asarray(Image.frombytes("RGB", (width, height), stream, "zip", "RGB"))
    with Image.open(io.BytesIO(data), formats=("PNG",)) as im:
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class _Decoder:
    """Sample dict -> (image, text, mask) arrays, with shapes fixed by the first good sample."""

    shapes: tuple | None = None

    def __call__(self, sample: dict) -> Decoded:
        try:
            if "latent.npy" in sample:
                image = load_npy(sample["latent.npy"])
            elif "png" in sample:
                image = decode_png(sample["png"])
            else:
                raise KeyError("neither png nor latent.npy")
            text, mask = load_npy(sample["text.npy"]), load_npy(sample["mask.npy"])
            shapes = (image.shape, image.dtype, text.shape, mask.shape)
            if self.shapes is None:
                if text.ndim != 2 or mask.shape != text.shape[:1]:
                    raise ValueError(f"text.npy {text.shape} and mask.npy {mask.shape} do not "
                                     "match [L, D] and [L]")
                self.shapes = shapes
            elif shapes != self.shapes:
                raise ValueError(f"shapes {shapes} differ from the stream's {self.shapes}")
            return image, text, mask.astype(bool, copy=False)
        except Exception as exc:
            raise ValueError(f"{sample.get('__url__')}: sample {sample.get('__key__')!r} does "
                             f"not decode ({type(exc).__name__}: {exc})") from exc


_SERIAL_CHUNK = 32768 - 1  # elements: below torch's grain size, so one thread does each copy


def _float32(arrays: list[np.ndarray]) -> np.ndarray:
    stacked = np.stack(arrays)
    if stacked.dtype != np.float16:
        return stacked.astype(np.float32, copy=False)
    # torch's vectorised conversion: 10x faster than a lookup table, 20x than numpy's astype.
    # In chunks each below the size torch would split across threads: a parallel region for a
    # few microseconds of work costs milliseconds when other processes hold the cores.
    source = torch.from_numpy(stacked).view(-1)
    out = torch.empty(source.shape, dtype=torch.float32)
    for start in range(0, source.numel(), _SERIAL_CHUNK):
        out[start:start + _SERIAL_CHUNK].copy_(source[start:start + _SERIAL_CHUNK])
    return out.view(stacked.shape).numpy()


def collate(samples: list[Decoded]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stacked float32 images [B, C, H, W] (uint8 HWC pixels to [-1, 1]), float32 text, masks."""
    if samples[0][0].dtype == np.uint8:
        images = np.stack([s[0] for s in samples]).transpose(0, 3, 1, 2).astype(np.float32)
        images *= 2 / 255
        images -= 1
    else:
        images = _float32([s[0] for s in samples])
    return images, _float32([s[1] for s in samples]), np.stack([s[2] for s in samples])


def _to_batch(arrays: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Batch:
    return Batch(*(torch.as_tensor(a) for a in arrays))


@dataclass
class _Skips:
    """Counts skipped shards and samples; warns once per shard."""

    count: int = 0
    warned: set = field(default_factory=set)

    def __call__(self, url: str, exc: BaseException) -> None:
        self.count += 1
        if url not in self.warned:
            self.warned.add(url)
            warnings.warn(f"skipping unreadable data in {url}: {type(exc).__name__}: {exc}",
                          stacklevel=3)


def _samples(urls: Iterable[str], decode: _Decoder, skips: _Skips) -> Iterator[Decoded]:
    """Decoded samples of the shards in order, skipping (and counting) what does not read."""
    for url in urls:
        try:
            for sample in read_shard(url):
                try:
                    decoded = decode(sample)
                except ValueError as exc:
                    skips(url, exc)
                    continue
                yield decoded
        except Exception as exc:  # missing, unreadable or cut-short shard: skip the rest
            skips(url, exc)


# ---------------------------------------------------------------------------------------------
# training stream


class _TrainStream(IterableDataset):
    """Infinite shuffled batches for one rank, as numpy arrays plus the skips since the last.

    The rank's readers ("slots", one per DataLoader worker) each take every n-th shard when there
    are at least as many shards as slots, else every n-th sample of every shard, so no two slots
    ever read the same sample. A reader's sample order is a pure function of the seed and the
    shard sizes: each pass visits its shards in a new random order, cut into groups of about
    `buffer` samples, and each group is read whole and given out in a random permutation. So
    the position after k samples is known by arithmetic alone, and a stream started at
    `start_batch` continues exactly where an uninterrupted one would be (resumed trials see the
    same data), after reading at most one group.

    Sizes come from `dataset.json` beside the shards, else from one scan of each shard. A sample
    that fails to decode, or that a shard cut short no longer holds, is skipped in place, so a
    resume after skips lands up to that many samples later than the original stream.
    """

    def __init__(self, urls: list[str], batch_size: int, seed: int, rank: int, world_size: int,
                 start_batch: int, workers: int, buffer: int,
                 listed: dict[str, int]) -> None:
        self.urls, self.batch_size, self.seed = urls, batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self.workers, self.buffer, self.listed = max(1, workers), buffer, listed

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
        info = get_worker_info()
        # A DataLoader takes batch j from worker j % workers. A resumed loader starts again at its
        # worker 0, so worker ids rotate by start_batch to keep each batch's source.
        reader = ((info.id if info is not None else 0) + self.start_batch) % self.workers
        slots = self.world_size * self.workers
        slot = self.rank * self.workers + reader
        by_shard = len(self.urls) >= slots
        shards = self.urls[slot::slots] if by_shard else self.urls
        name = f"{self.seed}/{self.rank}/{self.world_size}/{reader}"
        sizes: dict[str, int] = {}

        def kept(url: str) -> range:
            """Indices of this reader's samples in one shard."""
            if url not in sizes:
                sizes[url] = self.listed[url] if url in self.listed else _scan(url)
            return range(sizes[url]) if by_shard else range(slot, sizes[url], slots)

        def groups(index: int) -> list[list[str]]:
            order = list(shards)
            random.Random(f"{name}/{index}").shuffle(order)
            out, group, filled = [], [], 0
            for url in order:
                group.append(url)
                filled += len(kept(url))
                if filled >= self.buffer:
                    out.append(group)
                    group, filled = [], 0
            return out + [group] if group else out

        per_pass = sum(len(kept(u)) for u in shards)
        if per_pass == 0:
            raise RuntimeError(f"no readable samples in any of the {len(shards)} shards of rank "
                               f"{self.rank}, reader {reader}: {shards[:3]}")
        done = len(range(reader, self.start_batch, self.workers)) * self.batch_size
        index, offset = divmod(done, per_pass)
        skips, decode = _Skips(), _Decoder()

        def samples() -> Iterator[Decoded]:
            nonlocal index, offset
            while True:
                delivered = 0
                for g, group in enumerate(groups(index)):
                    order = [(url, i) for url in group for i in kept(url)]
                    if offset >= len(order):
                        offset -= len(order)
                        continue
                    random.Random(f"{name}/{index}/{g}").shuffle(order)
                    held = _read_group(group, {*order[offset:]}, skips)
                    for key in order[offset:]:
                        sample = held.pop(key, None)
                        if sample is None:  # cut off by a broken shard (already counted)
                            continue
                        try:
                            decoded = decode(sample)
                        except ValueError as exc:
                            skips(key[0], exc)
                            continue
                        delivered += 1
                        yield decoded
                    offset = 0
                if delivered == 0:
                    raise RuntimeError(f"no readable samples in a whole pass over the "
                                       f"{len(shards)} shards of rank {self.rank}, reader "
                                       f"{reader}: {shards[:3]}")
                index += 1

        stream = samples()
        reported = 0
        while True:
            batch = [next(stream) for _ in range(self.batch_size)]
            yield (*collate(batch), skips.count - reported)
            reported = skips.count


def _scan(url: str) -> int:
    """Samples in a shard, by reading it (those before a fault, 0 for a missing shard)."""
    n = 0
    try:
        for _ in read_shard(url):
            n += 1
    except Exception:  # counted as skips when the shard is read for its samples
        pass
    return n


def _read_group(urls: list[str], wanted: set[tuple[str, int]],
                skips: _Skips) -> dict[tuple[str, int], dict]:
    """The raw samples `(url, index in shard)` of a group that are wanted, undecoded."""
    held: dict[tuple[str, int], dict] = {}
    for url in urls:
        try:
            for i, sample in enumerate(read_shard(url)):
                if (url, i) in wanted:
                    held[url, i] = sample
        except Exception as exc:  # missing, unreadable or cut-short shard: keep what came
            skips(url, exc)
    return held


def train_batches(urls: list[str], batch_size: int, *, seed: int, rank: int = 0,
                  world_size: int = 1, start_batch: int = 0, stats: DataStats | None = None,
                  num_workers: int = 0) -> Iterator[Batch]:
    """Endless shuffled batches of `batch_size` samples for one rank of `world_size`.

    Shards are split between ranks (and DataLoader workers, `num_workers` > 0) so that no two
    read the same sample, and revisited in a fresh random order each pass, so a run may see the
    data many times (`stats.epochs`). The stream is a pure function of (urls, batch_size, seed,
    rank, world_size, num_workers); `start_batch` = b starts it at its (b+1)-th batch, the data
    position a resumed trial needs.
    """
    urls = check_urls(urls)
    for name, value, least in (("batch_size", batch_size, 1), ("world_size", world_size, 1),
                               ("start_batch", start_batch, 0), ("num_workers", num_workers, 0)):
        if value < least:
            raise ValueError(f"{name}={value} must be at least {least}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
    stats = stats if stats is not None else DataStats()
    listed = listed_sizes(urls)
    size = dataset_size(urls, listed)
    stats.samples = start_batch * batch_size
    stats.epochs = stats.samples * world_size / size if size else 0.0
    # A buffer larger than a reader's share of the data would hold copies of the same samples.
    share = size // (world_size * max(1, num_workers)) if size else SHUFFLE_BUFFER
    stream = _TrainStream(urls, batch_size, seed, rank, world_size, start_batch, num_workers,
                          buffer=max(1, min(SHUFFLE_BUFFER, share)), listed=listed)
    if num_workers == 0:
        source: Iterable = stream
    else:
        source = DataLoader(stream, batch_size=None, num_workers=num_workers, prefetch_factor=4)
    return _batches(source, stats, size, world_size)


def _batches(source: Iterable, stats: DataStats, size: int | None,
             world_size: int) -> Iterator[Batch]:
    for images, text, mask, skipped in source:
        stats.skipped += int(skipped)
        stats.samples += len(images)
        stats.epochs = stats.samples * world_size / size if size else 0.0
        yield _to_batch((images, text, mask))


def eval_batches(urls: list[str], batch_size: int, *, limit: int | None = None,
                 stats: DataStats | None = None) -> Iterator[Batch]:
    """One pass over the shards in the given order, the same samples in the same order on every
    call, stopping after `limit` samples (the last batch may be smaller)."""
    urls = check_urls(urls)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit} must be at least 1 (or None for all samples)")
    stats = stats if stats is not None else DataStats()
    return _eval(urls, batch_size, limit, stats, dataset_size(urls))


def _eval(urls: list[str], batch_size: int, limit: int | None, stats: DataStats,
          size: int | None) -> Iterator[Batch]:
    skips = _Skips()
    samples = _samples(urls, _Decoder(), skips)
    taken = 0
    while limit is None or taken < limit:
        want = batch_size if limit is None else min(batch_size, limit - taken)
        batch = [s for _, s in zip(range(want), samples, strict=False)]
        stats.skipped += skips.count
        skips.count = 0
        if not batch:
            break
        taken += len(batch)
        stats.samples += len(batch)
        stats.epochs = stats.samples / size if size else 0.0
        yield _to_batch(collate(batch))
    if taken == 0:
        raise RuntimeError(f"no readable samples in any of the {len(urls)} evaluation shards: "
                           f"{urls[:3]}")
