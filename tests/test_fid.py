"""FID plumbing with a tiny random CLIP saved with `save_pretrained` and loaded the real way, the
packaged Inception, cached reference statistics, and the end-of-trial evaluation in `train`."""

import numpy as np
import pytest
import torch
from PIL import Image

from scaling.evaluate import EvalConfig, FIDConfig
from scaling.fid import (
    FIDError,
    Stats,
    frechet,
    images_stats,
    load_extractor,
    real_images,
    reference_stats,
)
from scaling.model import DiTConfig, ModelShape
from scaling.objective import drop_captions
from scaling.train import TrainConfig, train


def _images(n, seed=0, shift=0):
    rng = np.random.default_rng(seed)
    return [np.clip(rng.integers(0, 200, (16, 16, 3)) + shift, 0, 255).astype(np.uint8)
            for _ in range(n)]


def test_same_set_is_zero_and_a_shifted_set_is_not(tiny_clip, tmp_path):
    clip = load_extractor("clip-vit-l-14", tiny_clip)
    assert clip.size == 32 and clip.identity.startswith("clip:")
    a = images_stats(iter(_images(48)), 48, clip, batch_size=16)
    b = images_stats(iter(_images(48, shift=50)), 48, clip, batch_size=16)
    same = frechet(a, a)
    assert same == 0.0 or same < 1e-6
    assert str(frechet(Stats(a.mu, a.sigma, 2), a)) != "-0.0"  # clamped, never negative zero
    assert frechet(a, b) > 0.1

    # The same number as clean-fid's compute_fid between two folders, with our network.
    from cleanfid.fid import compute_fid

    for name, images in (("a", _images(48)), ("b", _images(48, shift=50))):
        (tmp_path / name).mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(tmp_path / name / f"{i:03d}.png")
    reference = compute_fid(str(tmp_path / "a"), str(tmp_path / "b"), custom_feat_extractor=clip,
                            custom_fn_resize=clip.resize, device=torch.device("cpu"),
                            num_workers=0, batch_size=16, verbose=False)
    assert frechet(a, b) == pytest.approx(reference, rel=1e-4)


def test_low_rank_distance_matches_clean_fid():
    """Fewer images than features: the small eigenproblem gives clean-fid's sqrtm answer."""
    from cleanfid.fid import frechet_distance

    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 96)) @ rng.normal(size=(96, 96)) * 0.2
    fake = rng.normal(0.3, 1.0, size=(40, 96)) @ rng.normal(size=(96, 96)) * 0.2
    a, b = Stats.of(fake), Stats.of(real)
    assert a.factor is not None and b.factor is None
    reference = float(frechet_distance(a.mu, a.sigma, b.mu, b.sigma))
    assert frechet(a, b) == pytest.approx(reference, rel=1e-6)
    assert frechet(b, a) == pytest.approx(reference, rel=1e-6)
    full = Stats(b.mu, b.sigma, b.count)  # as read back from the reference cache
    assert frechet(a, full) == pytest.approx(reference, rel=1e-6)
    assert frechet(a, a) < 1e-8


def test_packaged_inception_gives_pool3_features():
    inception = load_extractor("inception")
    assert inception.size == 299 and inception.identity.startswith("inception:")
    image = torch.from_numpy(inception.resize(_images(1)[0]).transpose(2, 0, 1))[None]
    feats = inception(image.repeat(2, 1, 1, 1))
    assert feats.shape == (2, 2048) and torch.equal(feats[0], feats[1])
    assert (feats >= 0).all()  # pool3 after ReLU


def test_unknown_network_and_missing_directory_are_named():
    with pytest.raises(FIDError, match="not one of inception, clip-vit-l-14"):
        load_extractor("vgg")
    with pytest.raises(FIDError, match="no such directory"):
        load_extractor("clip-vit-l-14", "/nonexistent/clip")


def test_reference_statistics_are_computed_once(tiny_clip, tiny_data, tmp_path):
    clip = load_extractor("clip-vit-l-14", tiny_clip)
    urls = tiny_data.urls("val")
    first = reference_stats(urls, 32, clip, cache_dir=tmp_path, dataset="tiny/val")
    assert first.count == 32 and len(list(tmp_path.glob("fid-ref-*.npz"))) == 1
    # Served from the cache: the shards are not read again (these URLs do not exist).
    again = reference_stats(["/nonexistent.tar"], 32, clip, cache_dir=tmp_path,
                            dataset="tiny/val")
    np.testing.assert_array_equal(again.sigma, first.sigma)
    # Another image count is another entry.
    with pytest.raises(FIDError, match="at least 2 images"):
        reference_stats(["/nonexistent.tar"], 16, clip, cache_dir=tmp_path, dataset="tiny/val")
    skipped: list[str] = []
    assert len(list(real_images(urls, 5, skipped))) == 5 and not skipped


def test_drop_captions_is_seeded_and_drops_the_share_asked():
    mask = torch.ones(4000, 6, dtype=torch.bool)
    a = drop_captions(mask, 0.25, torch.Generator().manual_seed(1))
    b = drop_captions(mask, 0.25, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    dropped = (~a.any(1)).float().mean().item()
    assert 0.22 < dropped < 0.28 and (a.all(1) | ~a.any(1)).all()  # whole captions only
    assert drop_captions(mask, 0.0) is mask


def test_trial_ends_with_ood_loss_and_fid(tiny_data, tiny_clip, tmp_path):
    model = DiTConfig(ModelShape(1, 32, 2), image_size=16, text_dim=tiny_data.text_dim,
                      text_len=tiny_data.text_len)
    val = tuple(tiny_data.urls("val"))
    fid = FIDConfig(caption_urls=val, reference_urls=val, dataset=f"{tiny_data.content_hash}/val",
                    cache_dir=str(tmp_path), extractor="clip-vit-l-14", extractor_path=tiny_clip,
                    samples=16, reference_samples=64, steps=2, cfg_scale=2.0, batch_size=8)
    cfg = TrainConfig(model=model, steps=4, batch_size=8, train_urls=tuple(tiny_data.urls("train")),
                      val_urls=val, val_samples=32, report_every=2, caption_dropout=0.2,
                      eval=EvalConfig(ood_urls=tuple(tiny_data.urls("ood")), ood_samples=32,
                                      fid=fid))
    reports = []
    final = train(cfg, lambda m, ckpt: reports.append(m))
    assert "fid" not in reports[0]  # evaluation runs at the end only
    for key in ("val_loss", "ood_loss", "ood_loss_t0", "fid", "fid_seconds", "eval_seconds"):
        assert key in final, key
    assert final["fid"] > 0 and final["fid_samples"] == 16
    # Few steps of training: the shifted set is not easier than the held-out one.
    assert final["ood_loss"] > 0.5 * final["val_loss"]
