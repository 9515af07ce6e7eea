import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from scaling import builtin_data
from scaling.builtin_data import (
    TEMPLATES,
    DatasetInfo,
    draw_layout,
    iter_samples,
    longest_caption_tokens,
    render,
    write_builtin_dataset,
)
from scaling.data import load_npy, read_shard
from scaling.text import DEFAULT_MAX_LENGTH, TextEncoder

SMALL = dict(image_size=16, train_samples=96, val_samples=40, ood_samples=24,
             samples_per_shard=32, seed=3)
CAPTION = re.compile(
    r"^(a (small|large) \w+ (circle|square|triangle|diamond) (at the (top|bottom) (left|right)|"
    r"in the center)|an? \w+ (circle|square|triangle|diamond) (left of|above) an? \w+ "
    r"(circle|square|triangle|diamond)) on a \w+ background$")


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder.load()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> DatasetInfo:
    return write_builtin_dataset(tmp_path_factory.mktemp("builtin") / "data", **SMALL)


def test_samples_are_deterministic_jittered_and_described():
    a = list(iter_samples("train", 300, image_size=32, seed=1))
    b = list(iter_samples("train", 300, image_size=32, seed=1))
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b, strict=True))
    assert a[0][0].shape == (32, 32, 3) and a[0][0].dtype == np.uint8
    assert all(CAPTION.match(c) for _, c in a), [c for _, c in a if not CAPTION.match(c)][:3]
    captions = [c for _, c in a]
    assert len(set(captions)) < len(captions)  # a finite grammar repeats itself
    by_caption: dict[str, list[np.ndarray]] = {}
    for image, caption in a:
        by_caption.setdefault(caption, []).append(image)
    repeated = [v for v in by_caption.values() if len(v) > 1]
    assert repeated and all(not np.array_equal(v[0], v[1]) for v in repeated)
    other = list(iter_samples("train", 5, image_size=32, seed=2))
    assert [c for _, c in other] != captions[:5]


def test_render_draws_the_described_shape_where_the_caption_says():
    rng = np.random.default_rng(0)
    for _ in range(40):
        layout = draw_layout(rng)
        if len(layout.shapes) != 1 or "center" in layout.caption:
            continue
        image = render(layout, 32).astype(np.float32)
        distance = np.abs(image - np.asarray(layout.background)).sum(-1)
        ys, xs = np.nonzero(distance > 60)
        cx, cy = xs.mean() / 32, ys.mean() / 32
        assert ("left" in layout.caption) == (cx < 0.5), layout.caption
        assert ("top" in layout.caption) == (cy < 0.5), layout.caption


def test_ood_shares_the_grammar_but_not_the_statistics():
    ind = list(iter_samples("train", 200, image_size=32, seed=0))
    ood = list(iter_samples("ood", 200, image_size=32, seed=0))
    assert all(CAPTION.match(c) for _, c in ood)

    def corner_noise(samples):  # pixel spread in a background corner
        return np.mean([im[:4, :4].astype(np.float32).std(axis=(0, 1)).mean() for im, _ in samples
                        if "top left" not in _ and "left of" not in _ and "above" not in _])

    assert corner_noise(ood) > 3 * corner_noise(ind) + 5


def test_longest_caption_fits_the_default_text_length(encoder):
    longest = longest_caption_tokens(encoder)
    assert longest == 14 and longest <= DEFAULT_MAX_LENGTH  # documented in scaling/text.py
    captions = [c for _, c in iter_samples("train", 500, image_size=8, seed=0)]
    assert encoder.token_lengths(captions).max() <= longest
    distinct = 1
    for template in TEMPLATES[:1]:
        for slot in template:
            distinct *= len(slot)
    assert distinct == 960  # one-shape captions: finite, so text encoding stays cheap


def test_written_dataset_follows_the_shard_contract(dataset, encoder):
    root = dataset.root
    assert sorted(p.name for p in root.iterdir()) == [
        "dataset.json", "ood-000000.tar", "train-000000.tar", "train-000001.tar",
        "train-000002.tar", "val-000000.tar", "val-000001.tar"]
    assert (dataset.image_size, dataset.channels, dataset.image_key) == (16, 3, "png")
    assert (dataset.text_dim, dataset.text_len) == (384, 14)
    assert [dataset.samples(s) for s in ("train", "val", "ood")] == [96, 40, 24]
    assert [s.samples for s in dataset.splits["val"]] == [32, 8]
    assert dataset.params["seed"] == 3 and dataset.content_hash.startswith("sha256:")
    samples = list(read_shard(dataset.urls("val")[1]))
    assert len(samples) == 8 and len({s["__key__"] for s in samples}) == 8
    sample = samples[0]
    assert {"png", "txt", "text.npy", "mask.npy"} <= set(sample)
    text, mask = load_npy(sample["text.npy"]), load_npy(sample["mask.npy"])
    assert text.dtype == np.float16 and text.shape == (14, 384)
    assert mask.dtype == bool and mask.shape == (14,)
    expected, expected_mask = encoder.encode([sample["txt"].decode()], )
    np.testing.assert_array_equal(mask, expected_mask[0, :14])
    np.testing.assert_allclose(text.astype(np.float32), expected[0, :14].astype(np.float32),
                               atol=2e-2)
    assert DatasetInfo.load(root) == dataset


def test_second_call_reuses_the_dataset_without_regenerating(dataset, monkeypatch):
    before = {p.name: p.stat().st_mtime_ns for p in dataset.root.iterdir()}

    def fail(*args, **kwargs):
        raise AssertionError("the encoder was loaded: the dataset was regenerated")

    monkeypatch.setattr(TextEncoder, "load", fail)
    again = write_builtin_dataset(dataset.root, **SMALL)
    assert again == dataset
    assert {p.name: p.stat().st_mtime_ns for p in dataset.root.iterdir()} == before


def test_other_parameters_on_an_existing_dataset_are_refused(dataset):
    with pytest.raises(FileExistsError, match="train_samples: 96 there, 128 asked"):
        write_builtin_dataset(dataset.root, **{**SMALL, "train_samples": 128})


def test_a_damaged_dataset_is_not_reused(dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset.root, copy)
    shard = copy / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(FileNotFoundError, match="train-000001.tar"):
        write_builtin_dataset(copy, **SMALL)


def test_same_parameters_give_the_same_content(dataset, tmp_path):
    other = write_builtin_dataset(tmp_path / "again", **SMALL)
    assert other.content_hash == dataset.content_hash
    assert other.urls("train")[0] != dataset.urls("train")[0]


def test_a_crash_leaves_no_dataset_behind(tmp_path, monkeypatch):
    calls = []

    def broken_render(*args, **kwargs):
        calls.append(1)
        if len(calls) > 50:
            raise KeyboardInterrupt
        return render(*args, **kwargs)

    monkeypatch.setattr(builtin_data, "render", broken_render)
    with pytest.raises(KeyboardInterrupt):
        write_builtin_dataset(tmp_path / "data", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="samples_per_shard=0"):
        write_builtin_dataset(tmp_path / "d", samples_per_shard=0)
    with pytest.raises(ValueError, match="text_len=8 would truncate"):
        write_builtin_dataset(tmp_path / "d", **{**SMALL, "text_len": 8})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no dataset.json"):
        write_builtin_dataset(tmp_path / "busy", **SMALL)


def test_dataset_info_errors_name_the_file(tmp_path, dataset):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        DatasetInfo.load(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="dataset.json: not valid JSON"):
        DatasetInfo.load(tmp_path)
    data = json.loads((dataset.root / "dataset.json").read_text())
    del data["text_dim"]
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="malformed.*text_dim"):
        DatasetInfo.load(tmp_path)
    with pytest.raises(KeyError, match="no split 'test'"):
        dataset.urls("test")


def test_dataset_json_may_list_absolute_urls(tmp_path, dataset):
    data = json.loads((dataset.root / "dataset.json").read_text())
    data["splits"]["train"]["shards"][0]["name"] = "s3://bucket/train-000000.tar"
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    info = DatasetInfo.load(tmp_path)
    assert info.urls("train")[0] == "s3://bucket/train-000000.tar"
    assert info.urls("train")[1] == str(Path(tmp_path) / "train-000001.tar")
