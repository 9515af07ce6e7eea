"""Samples per second of the training data pipeline on the built-in dataset, side by side.

Rows: our tar reader alone; `train_batches` in-process and with DataLoader workers; `eval_batches`;
and, for reference, webdataset's own pipeline (`WebDataset` + `.decode` + `.to_tuple` +
`.batched`) doing the same work. The dataset is written once under --root (about 255 MB, 20-60 s).

    .venv/bin/python benchmarks/data_speed.py [--root DIR] [--batches 150] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import webdataset as wds

from scaling.builtin_data import write_builtin_dataset
from scaling.data import eval_batches, read_shard, train_batches


def rate(make: Callable[[], Iterable], batches: int, per_batch: int, repeats: int = 3) -> float:
    """Samples/s over `batches` items after one warm-up item (shuffle buffer, worker start); the
    best of `repeats` runs, since other work on a shared machine only ever slows a run down."""
    best = 0.0
    for _ in range(repeats):
        it = iter(make())
        next(it)
        started = time.perf_counter()
        for _ in itertools.islice(it, batches):
            pass
        best = max(best, batches * per_batch / (time.perf_counter() - started))
    return best


def webdataset_reference(urls: list[str], batch_size: int) -> Iterable:
    def collate(samples):
        images, text, mask = zip(*samples, strict=True)
        return (np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1,
                np.stack(text).astype(np.float32), np.stack(mask))

    return (wds.WebDataset(urls, resampled=True, shardshuffle=False, empty_check=False,
                           nodesplitter=None, seed=0)
            .shuffle(2048, initial=512)
            .decode("rgb8")
            .to_tuple("png", "text.npy", "mask.npy")
            .batched(batch_size, collation_fn=collate))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path,
                        default=Path(tempfile.gettempdir()) / "dit-scaling-bench-data")
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    args = parser.parse_args()

    info = write_builtin_dataset(args.root)
    urls, bs, n = info.urls("train"), args.batch_size, args.batches
    rows: list[tuple[str, float]] = [
        ("webdataset WebDataset pipeline (reference)",
         rate(lambda: webdataset_reference(urls, bs), n, bs)),
        ("read_shard: tar parsing only", rate(lambda: read_shard(urls[0]), min(2000, n * bs), 1)),
    ]
    for workers in args.workers:
        rows.append((f"train_batches, num_workers={workers}",
                     rate(lambda w=workers: train_batches(urls, bs, seed=0, num_workers=w), n, bs)))
    rows.append(("eval_batches (one ordered pass)",
                 rate(lambda: eval_batches(urls, bs), min(n, info.samples("train") // bs - 1), bs)))

    base = rows[0][1]
    print(f"built-in dataset {info.root}: {info.samples('train')} train samples, "
          f"{info.image_size}px png, text {info.text_len}x{info.text_dim} float16; batch {bs}")
    print(f"{'pipeline':<46} {'samples/s':>10} {'vs webdataset':>14}")
    for name, value in rows:
        print(f"{name:<46} {value:>10,.0f} {value / base:>13.2f}x")


if __name__ == "__main__":
    main()
