"""Data preparation: a round trip through a tiny random AutoencoderKL and text encoder, both saved
with `save_pretrained` and loaded the real way; bad samples skipped and counted."""

import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from scaling.builtin_data import DatasetInfo
from scaling.data import eval_batches, load_npy, read_shard
from scaling.prepare import PrepareConfig, prepare_dataset, source_urls, split_of
from scaling.text import TextEncoder


def _jpg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_source(folder, n=40, shards=2, seed=0):
    """Image-caption shards as users bring them (jpg + txt), with three bad samples."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = n // shards
    for s in range(shards):
        with wds.TarWriter(str(folder / f"src-{s:03d}.tar")) as sink:
            for i in range(s * per, (s + 1) * per):
                image = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)  # not square
                sink.write({"__key__": f"img{i:04d}", "jpg": _jpg(image),
                            "txt": f"a picture number {i % 7}"})
            if s == 0:
                sink.write({"__key__": "broken", "jpg": b"not an image", "txt": "broken"})
                sink.write({"__key__": "nocaption", "jpg": _jpg(image)})
                sink.write({"__key__": "emptycaption", "png": _jpg(image), "txt": "  "})
    return folder


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A random 2-level AutoencoderKL (latents 4 x 8 x 8 for 16 px) and a 1-layer BERT with the
    packaged MiniLM tokenizer, each saved to a directory."""
    from diffusers import AutoencoderKL
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                        layers_per_block=1, norm_num_groups=4, sample_size=16)
    vae.save_pretrained(root / "vae")
    tok = TextEncoder.load().tokenizer
    bert = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=64))
    bert.save_pretrained(root / "text")
    tok.save_pretrained(root / "text")
    return root / "vae", root / "text"


def test_source_urls(tmp_path):
    src = write_source(tmp_path / "src", n=4)
    assert source_urls(str(src)) == [str(src / "src-000.tar"), str(src / "src-001.tar")]
    assert source_urls(str(src / "src-{000..001}.tar")) == source_urls(str(src))
    with pytest.raises(FileNotFoundError, match="no such shard"):
        source_urls(str(tmp_path / "missing.tar"))


def test_round_trip_with_autoencoder(tmp_path, tiny_models):
    vae_dir, text_dir = tiny_models
    src = write_source(tmp_path / "src")
    ood = write_source(tmp_path / "ood", n=6, shards=1, seed=1)
    cfg = PrepareConfig(image_size=16, text_encoder=str(text_dir), text_len=8,
                        autoencoder=str(vae_dir), val_fraction=0.25, samples_per_shard=8,
                        batch_size=5)
    info = prepare_dataset(source_urls(str(src)), tmp_path / "out", cfg,
                           ood=source_urls(str(ood)))

    # Metadata: latents of the VAE, encoder names, counts and the skips by reason.
    assert (info.image_key, info.image_size, info.channels) == ("latent.npy", 8, 4)
    assert (info.text_encoder, info.text_dim, info.text_len) == (str(text_dir), 32, 8)
    val_keys = [f"img{i:04d}" for i in range(40) if split_of(f"img{i:04d}", 0.25) == "val"]
    assert info.samples("val") == len(val_keys) and info.samples("train") == 40 - len(val_keys)
    assert info.samples("ood") == 6 + 0  # the ood source's bad samples are skipped too
    assert info.params["skipped"] == {"missing caption": 4, "unreadable image": 2}
    assert info.params["autoencoder"] == str(vae_dir) and info.params["latent_scale"] == 0.18215
    assert info.content_hash.startswith("sha256:")
    assert all(s.samples <= 8 for s in info.splits["train"]) and len(info.splits["train"]) >= 3
    stored = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert stored["content_hash"] == info.content_hash

    # Round trip: what the trainer reads equals the encoders' output for the same inputs.
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir)
    text = TextEncoder.load(str(text_dir), 8)
    samples = {s["__key__"]: s for s in read_shard(info.urls("val")[0])}
    key, sample = next(iter(samples.items()))
    assert "png" in sample  # held-out splits keep pixels for FID
    pixels = np.array(Image.open(io.BytesIO(sample["png"])))
    assert pixels.shape == (16, 16, 3)
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        expected = vae.encode(x).latent_dist.mode()[0] * 0.18215
    np.testing.assert_allclose(load_npy(sample["latent.npy"]).astype(np.float32),
                               expected.numpy(), atol=2e-3, rtol=2e-3)
    feats, mask = text.encode([sample["txt"].decode()])
    np.testing.assert_array_equal(load_npy(sample["text.npy"]), feats[0])
    np.testing.assert_array_equal(load_npy(sample["mask.npy"]), mask[0])
    batch = next(eval_batches(info.urls("train"), 4))
    assert batch.image.shape == (4, 4, 8, 8) and batch.text.shape == (4, 8, 32)
    assert not any("png" in s for s in read_shard(info.urls("train")[0]))


def test_pixels_without_autoencoder_and_refuses_a_used_destination(tmp_path, tiny_models):
    _, text_dir = tiny_models
    src = write_source(tmp_path / "src", n=10, shards=1)
    cfg = PrepareConfig(image_size=16, text_encoder=str(text_dir), text_len=8, val_fraction=0.0)
    info = prepare_dataset(source_urls(str(src)), tmp_path / "px", cfg)
    assert (info.image_key, info.image_size, info.channels) == ("png", 16, 3)
    assert "val" not in info.splits and info.samples("train") == 10
    assert DatasetInfo.load(tmp_path / "px").content_hash == info.content_hash
    with pytest.raises(FileExistsError, match="not empty"):
        prepare_dataset(source_urls(str(src)), tmp_path / "px", cfg)


@pytest.mark.slow
def test_cli_in_process_and_on_ray_give_the_same_samples(tmp_path, tiny_models, capsys):
    """`dit-scaling data prepare` locally and with --address through Ray Data: the same keys,
    the same counts of skips, and arrays equal to float16 rounding (batches differ)."""
    import ray

    from search.cli import main

    vae_dir, text_dir = tiny_models
    src = write_source(tmp_path / "src", n=24)
    common = [str(src), "--image-size", "16", "--text-encoder", str(text_dir), "--text-len", "8",
              "--autoencoder", str(vae_dir), "--val-fraction", "0.25", "--samples-per-shard",
              "10", "--batch-size", "6"]
    assert main(["data", "prepare", common[0], str(tmp_path / "local"), *common[1:]]) == 0
    assert "skipped: 2 missing caption, 1 unreadable image" in capsys.readouterr().out
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        assert main(["data", "prepare", common[0], str(tmp_path / "ray"), *common[1:],
                     "--address", address, "--workers", "1"]) == 0
    finally:
        ray.shutdown()
    local, remote = DatasetInfo.load(tmp_path / "local"), DatasetInfo.load(tmp_path / "ray")
    assert remote.params["engine"] == "ray-data" and local.params["engine"] == "in-process"
    assert remote.params["skipped"] == local.params["skipped"]
    for split in ("train", "val"):
        assert remote.samples(split) == local.samples(split)
        a = {s["__key__"]: s for url in local.urls(split) for s in read_shard(url)}
        b = {s["__key__"]: s for url in remote.urls(split) for s in read_shard(url)}
        assert a.keys() == b.keys()
        for key in a:
            assert a[key]["txt"] == b[key]["txt"] and (split == "val") == ("png" in b[key])
            for name in ("latent.npy", "text.npy"):
                np.testing.assert_allclose(load_npy(a[key][name]).astype(np.float32),
                                           load_npy(b[key][name]).astype(np.float32),
                                           atol=2e-3, rtol=2e-3)


def test_cli_names_a_missing_source(tmp_path, capsys):
    from search.cli import main

    assert main(["data", "prepare", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "nowhere: no such shard or directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
