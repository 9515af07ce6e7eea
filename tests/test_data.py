import hashlib
import io
import itertools
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from scaling.builtin_data import DatasetInfo, write_builtin_dataset
from scaling.data import (
    Batch,
    DataStats,
    _open_pyarrow,
    decode_png,
    eval_batches,
    load_npy,
    read_shard,
    register_pyarrow_schemes,
    train_batches,
)

TRAIN, SHARD = 192, 32  # six train shards


@pytest.fixture(scope="module")
def info(tmp_path_factory) -> DatasetInfo:
    return write_builtin_dataset(tmp_path_factory.mktemp("data") / "d", image_size=16,
                                 train_samples=TRAIN, val_samples=64, ood_samples=0,
                                 samples_per_shard=SHARD, seed=0)


def ids(batch: Batch) -> list[str]:
    """One identity per sample, from its pixels and caption features."""
    return [hashlib.sha1(i.numpy().tobytes() + t.numpy().tobytes()).hexdigest()
            for i, t in zip(batch.image, batch.text, strict=True)]


def all_ids(urls: list[str]) -> list[str]:
    return [k for b in eval_batches(urls, 64) for k in ids(b)]


def take(it, n: int) -> list[Batch]:
    return list(itertools.islice(it, n))


def test_batches_hold_scaled_pixels_text_features_and_masks(info):
    batch = next(eval_batches(info.urls("val"), 8))
    assert batch.image.shape == (8, 3, 16, 16) and batch.image.dtype == torch.float32
    assert batch.text.shape == (8, 14, 384) and batch.text.dtype == torch.float32
    assert batch.mask.shape == (8, 14) and batch.mask.dtype == torch.bool
    first = next(read_shard(info.urls("val")[0]))
    pixels = np.asarray(Image.open(io.BytesIO(first["png"])), dtype=np.float32)
    np.testing.assert_allclose(batch.image[0].numpy(), pixels.transpose(2, 0, 1) / 127.5 - 1,
                               atol=1e-6)
    np.testing.assert_array_equal(batch.text[0].numpy(),
                                  load_npy(first["text.npy"]).astype(np.float32))
    np.testing.assert_array_equal(batch.mask[0].numpy(), load_npy(first["mask.npy"]))
    assert batch.image.min() >= -1 and batch.image.max() <= 1


def test_training_stream_is_deterministic(info):
    urls = info.urls("train")
    a = take(train_batches(urls, 16, seed=1), 5)
    b = take(train_batches(urls, 16, seed=1), 5)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.image, y.image) and torch.equal(x.text, y.text)
        assert torch.equal(x.mask, y.mask)
    assert ids(take(train_batches(urls, 16, seed=2), 1)[0]) != ids(a[0])
    resumed = DataStats()
    later = take(train_batches(urls, 16, seed=1, start_batch=3, stats=resumed), 2)
    assert [ids(b) for b in later] == [ids(b) for b in a[3:5]]  # a resumed stream continues
    assert resumed.samples == 5 * 16


def test_training_resamples_beyond_one_pass(info):
    urls = info.urls("train")
    stats = DataStats()
    seen = [k for b in take(train_batches(urls, 32, seed=0, stats=stats), 4 * TRAIN // 32)
            for k in ids(b)]
    assert stats.samples == 4 * TRAIN and stats.epochs == pytest.approx(4.0)
    assert stats.skipped == 0
    dataset = set(all_ids(urls))
    assert len(dataset) == TRAIN and set(seen) == dataset  # every sample, nothing else
    counts = np.unique(seen, return_counts=True)[1]
    assert (counts == 4).all()  # each pass gives every sample once


@pytest.mark.parametrize("shards", [6, 1])
def test_ranks_read_disjoint_samples(info, shards):
    urls = info.urls("train")[:shards]
    n = shards * SHARD
    per_rank = []
    for rank in range(2):
        stream = train_batches(urls, 8, seed=0, rank=rank, world_size=2)
        per_rank.append({k for b in take(stream, 3 * n // 2 // 8) for k in ids(b)})
    assert not per_rank[0] & per_rank[1]
    assert per_rank[0] | per_rank[1] == set(all_ids(urls))


def test_dataloader_workers_split_the_data_deterministically(info):
    urls = info.urls("train")
    runs = [take(train_batches(urls, 16, seed=0, num_workers=2), 36) for _ in range(2)]
    assert [ids(b) for b in runs[0]] == [ids(b) for b in runs[1]]
    # The DataLoader takes batches from its workers in turn: even ones from worker 0.
    per_worker = [{k for b in runs[0][w::2] for k in ids(b)} for w in range(2)]
    assert not per_worker[0] & per_worker[1]
    assert per_worker[0] | per_worker[1] == set(all_ids(urls))
    # Resumed at an odd batch, worker 0 of the new loader continues the old worker 1.
    resumed = take(train_batches(urls, 16, seed=0, num_workers=2, start_batch=13), 4)
    assert [ids(b) for b in resumed] == [ids(b) for b in runs[0][13:17]]


@pytest.mark.parametrize("start", [1, 7, 25])
@pytest.mark.parametrize("shards", [3, 1])  # 1: fewer shards than ranks, split by sample
def test_resumed_streams_continue_across_passes_and_ranks(info, start, shards):
    urls = info.urls("train")[:shards]
    for rank in range(2):
        whole = take(train_batches(urls, 8, seed=3, rank=rank, world_size=2), start + 3)
        later = take(train_batches(urls, 8, seed=3, rank=rank, world_size=2, start_batch=start), 3)
        assert [ids(b) for b in later] == [ids(b) for b in whole[start:]]


def test_eval_is_one_ordered_pass_and_respects_the_limit(info):
    urls = info.urls("val")
    stats = DataStats()
    first = list(eval_batches(urls, 16, limit=50, stats=stats))
    second = list(eval_batches(urls, 16, limit=50))
    assert [b.image.shape[0] for b in first] == [16, 16, 16, 2]
    assert all(torch.equal(a.image, b.image) for a, b in zip(first, second, strict=True))
    assert stats.samples == 50 and stats.epochs == pytest.approx(50 / 64)
    whole = list(eval_batches(urls, 48))
    assert [b.image.shape[0] for b in whole] == [48, 16]
    assert [k for b in first for k in ids(b)] == [k for b in whole for k in ids(b)][:50]


@pytest.fixture
def broken(info, tmp_path) -> tuple[list[str], dict[str, int]]:
    """Two good shards, one cut in the middle of a sample, one that does not exist."""
    good = [shutil.copy(u, tmp_path) for u in info.urls("train")[:2]]
    cut = tmp_path / "cut.tar"
    data = Path(info.urls("train")[2]).read_bytes()
    cut.write_bytes(data[:len(data) // 2 + 100])
    urls = [good[0], str(cut), str(tmp_path / "missing.tar"), good[1]]
    return urls, {"cut": len(list(_complete(cut)))}


def _complete(path: Path):
    try:
        yield from read_shard(str(path))
    except EOFError:
        return


def test_eval_skips_and_counts_broken_shards(broken):
    urls, complete = broken
    stats = DataStats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n = sum(b.image.shape[0] for b in eval_batches(urls, 16, stats=stats))
    assert 0 < complete["cut"] < SHARD
    assert n == 2 * SHARD + complete["cut"] and stats.samples == n
    assert stats.skipped == 2
    messages = [str(w.message) for w in caught]
    assert any("cut.tar" in m and "truncated" in m for m in messages)
    assert any("missing.tar" in m for m in messages)
    assert stats.epochs == 0.0  # copied shards: no dataset.json, so the size is unknown


def test_training_skips_broken_shards_and_warns_once_each(broken):
    urls, _ = broken
    stats = DataStats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = take(train_batches(urls, 16, seed=0, stats=stats), 30)
    assert len(batches) == 30 and stats.samples == 30 * 16
    assert stats.skipped >= 4  # each broken shard, visited in at least two passes
    warned = [str(w.message) for w in caught]
    assert sum("missing.tar" in m for m in warned) == 1
    assert sum("cut.tar" in m for m in warned) == 1


def test_workers_report_their_skips(broken):
    urls, _ = broken
    stats = DataStats()
    take(train_batches(urls, 16, seed=0, num_workers=2, stats=stats), 10)
    assert stats.skipped >= 2


def test_undecodable_samples_are_skipped_and_counted(info, tmp_path):
    samples = list(read_shard(info.urls("val")[0]))[:4]
    samples[1] = {**samples[1], "png": b"not a png"}
    samples[2] = {k: v for k, v in samples[2].items() if k != "mask.npy"}
    path = tmp_path / "bad.tar"
    with wds.TarWriter(str(path), encoder=False) as sink:
        for s in samples:
            sink.write({k: v for k, v in s.items() if k != "__url__"})
    stats = DataStats()
    with pytest.warns(UserWarning, match="bad.tar"):
        batches = list(eval_batches([str(path)], 8, stats=stats))
    assert sum(b.image.shape[0] for b in batches) == 2 and stats.skipped == 2


def test_latent_samples_are_passed_through(info, tmp_path):
    sample = next(read_shard(info.urls("val")[0]))
    latent = np.random.default_rng(0).standard_normal((4, 8, 8)).astype(np.float16)
    buf = io.BytesIO()
    np.save(buf, latent)
    path = tmp_path / "latent.tar"
    with wds.TarWriter(str(path), encoder=False) as sink:
        sink.write({"__key__": "k0", "latent.npy": buf.getvalue(), "txt": sample["txt"],
                    "text.npy": sample["text.npy"], "mask.npy": sample["mask.npy"]})
    batch = next(eval_batches([str(path)], 4))
    assert batch.image.dtype == torch.float32
    np.testing.assert_array_equal(batch.image[0].numpy(), latent.astype(np.float32))


def test_nothing_readable_is_an_error(tmp_path):
    urls = [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]
    with pytest.raises(RuntimeError, match="no readable samples"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        next(train_batches(urls, 4, seed=0))
    with pytest.raises(RuntimeError, match="no readable samples"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        list(eval_batches(urls, 4))


def test_bad_urls_and_arguments_are_refused(info):
    with pytest.raises(ValueError, match="ends in '/'"):
        train_batches([info.urls("train")[0], str(info.root) + "/"], 4, seed=0)
    with pytest.raises(TypeError, match="list of shard URLs"):
        eval_batches(info.urls("val")[0], 4)
    with pytest.raises(ValueError, match="empty"):
        train_batches([], 4, seed=0)
    with pytest.raises(ValueError, match="rank=2"):
        train_batches(info.urls("train"), 4, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size=0"):
        eval_batches(info.urls("val"), 0)


def test_file_urls_and_pyarrow_schemes_read_the_same_samples(info):
    from pyarrow import fs

    local = all_ids(info.urls("val"))
    assert all_ids(["file://" + u for u in info.urls("val")]) == local
    with _open_pyarrow("file://" + info.urls("val")[0]) as stream:
        assert stream.read() == Path(info.urls("val")[0]).read_bytes()
    tree = fs.SubTreeFileSystem(str(info.root), fs.LocalFileSystem())
    register_pyarrow_schemes(["testfs"], filesystem=tree)
    try:
        names = [Path(u).name for u in info.urls("val")]
        assert all_ids([f"testfs://{n}" for n in names]) == local
    finally:
        del wds.gopen_schemes["testfs"]


def test_png_decoding_matches_pil(info):
    # The built-in data's RGB PNGs take the direct path; other modes, and PNGs it cannot vouch
    # for, go through PIL's reader, with the same pixels either way.
    for sample in itertools.islice(read_shard(info.urls("train")[0]), 16):
        expected = np.asarray(Image.open(io.BytesIO(sample["png"])).convert("RGB"))
        got = decode_png(sample["png"])
        assert got.dtype == np.uint8 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for mode in ("RGB", "RGBA", "L", "P"):
        image = Image.fromarray(pixels).convert(mode)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        np.testing.assert_array_equal(decode_png(buf.getvalue()),
                                      np.asarray(image.convert("RGB")))
    with pytest.raises(OSError):
        decode_png(buf.getvalue()[: len(buf.getvalue()) // 2])  # cut short


def test_text_features_convert_exactly_to_float32(info):
    batch = next(eval_batches(info.urls("val"), 8))
    stored = [load_npy(s["text.npy"]) for s in itertools.islice(read_shard(info.urls("val")[0]), 8)]
    assert batch.text.dtype == torch.float32
    np.testing.assert_array_equal(batch.text.numpy(), np.stack(stored).astype(np.float32))
