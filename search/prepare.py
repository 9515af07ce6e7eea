"""Data preparation on a Ray cluster through Ray Data:
`read_webdataset` -> `map_batches` (the encoders, one copy per actor, on GPUs when asked) ->
`write_webdataset`, once per split, then the same naming, hashing and `dataset.json` as the
in-process path (`scaling.prepare`).

Skipped samples are counted by reason in a small Ray actor that every encoder reports to, so the
counts survive however the batches are spread over the cluster.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import ray

from scaling.builtin_data import DatasetInfo
from scaling.prepare import (
    PrepareConfig,
    Preparer,
    _log,
    check_destination,
    finish_dataset,
    split_of,
)

OUTPUT_COLUMNS = ("__key__", "txt", "text.npy", "mask.npy", "latent.npy", "png")


@ray.remote(num_cpus=0)
class SkipCounter:
    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def add(self, counts: dict[str, int]) -> None:
        self.counts.update(counts)

    def get(self) -> dict[str, int]:
        return dict(self.counts)


class _Encode:
    """The Ray Data UDF: a `Preparer` per actor, numpy batches of raw samples in and out."""

    def __init__(self, cfg: PrepareConfig, keep_pixels: bool, counter) -> None:
        self.preparer = Preparer(cfg)
        self.keep_pixels = keep_pixels
        self.counter = counter
        latent = cfg.autoencoder is not None
        # The same columns for every batch, even one whose samples were all skipped.
        self.columns = [c for c in OUTPUT_COLUMNS
                        if (c != "latent.npy" or latent) and (c != "png" or not latent
                                                              or keep_pixels)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["__key__"])
        # A file a sample lacks comes back as None or NaN (Ray fills the column): drop it.
        samples = [{k: v[i] for k, v in batch.items() if isinstance(v[i], bytes | str)}
                   for i in range(n)]
        out, skipped = self.preparer(samples, self.keep_pixels)
        if skipped:
            ray.get(self.counter.add.remote(dict(skipped)))  # counted before the batch moves on
        return {c: np.array([s[c] for s in out], dtype=object) for c in self.columns}


def prepare_on_ray(source: list[str], dst: str | Path, cfg: PrepareConfig | None = None,
                   ood: list[str] | None = None, *, address: str | None = None,
                   workers: int = 1, gpus_per_worker: float = 0.0) -> DatasetInfo:
    """Prepare the dataset on the Ray cluster at `address` (or the one already connected) with
    `workers` encoder actors, each holding `gpus_per_worker` GPUs."""
    cfg = cfg or PrepareConfig()
    dst = check_destination(dst)
    started = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    counter = SkipCounter.remote()
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    latent = cfg.autoencoder is not None
    plan = [("train", source, "train"), ("ood", ood or [], None)]
    if cfg.val_fraction > 0:
        plan.insert(1, ("val", source, "val"))
    try:
        for split, urls, which in plan:
            if not urls:
                continue
            ds = ray.data.read_webdataset(urls, decoder=None)
            if which is not None:
                ds = ds.filter(lambda row, which=which: split_of(str(row["__key__"]),
                                                                 cfg.val_fraction) == which)
            ds = ds.map_batches(_Encode, batch_size=cfg.batch_size, batch_format="numpy",
                                fn_constructor_kwargs={"cfg": cfg, "counter": counter,
                                                       "keep_pixels": latent and split != "train"},
                                compute=ray.data.ActorPoolStrategy(size=workers),
                                num_gpus=gpus_per_worker or None)
            out = tmp / f".{split}"
            ds.write_webdataset(str(out), encoder=None, min_rows_per_file=cfg.samples_per_shard)
            # Ray names files by dataset and block; give them the dataset's own names.
            for i, path in enumerate(sorted(out.glob("*.tar"))):
                path.rename(tmp / f"{split}-{i:06d}.tar")
            shutil.rmtree(out)
        skipped = Counter(ray.get(counter.get.remote()))
        info = finish_dataset(tmp, dst, cfg, source, ood or [], skipped, "ray-data")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log(f"dataset ready at {dst} in {time.perf_counter() - started:.1f} s (Ray Data, "
         f"{workers} encoder actor(s))")
    return info
