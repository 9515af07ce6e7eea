"""What a dataset is, from its `dataset.json`: shards by split and the dimensions a model needs.

Written by the built-in generator (`scaling.builtin_data`) and by `scaling.prepare`, read by the
study before anything trains. Reading it needs only the standard library, so a spec can be checked
against its dataset before torch is imported.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

FORMAT = "dit-scaling/webdataset-v1"


@dataclass(frozen=True)
class ShardInfo:
    name: str  # relative to the dataset root, or an absolute URL
    samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class DatasetInfo:
    """A webdataset dataset as described by its `dataset.json`: shards by split and the
    dimensions the model needs (image side in pixels or latent cells, channels, text tokens)."""

    root: Path
    image_key: str  # "png" or "latent.npy"
    image_size: int
    channels: int
    text_encoder: str
    text_dim: int
    text_len: int
    splits: dict[str, tuple[ShardInfo, ...]]
    params: dict
    content_hash: str

    def urls(self, split: str) -> list[str]:
        """Shard URLs of a split: local paths under `root`, or the absolute URLs stored."""
        if split not in self.splits:
            raise KeyError(f"dataset {self.root} has no split {split!r}; it has "
                           f"{sorted(self.splits)}")
        return [s.name if "://" in s.name or os.path.isabs(s.name) else str(self.root / s.name)
                for s in self.splits[split]]

    def samples(self, split: str) -> int:
        self.urls(split)
        return sum(s.samples for s in self.splits[split])

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "image_key": self.image_key, "image_size": self.image_size,
            "channels": self.channels, "text_encoder": self.text_encoder,
            "text_dim": self.text_dim, "text_len": self.text_len,
            "splits": {k: {"samples": sum(s.samples for s in v),
                           "shards": [vars(s) for s in v]} for k, v in self.splits.items()},
            "params": self.params, "content_hash": self.content_hash,
        }

    @classmethod
    def load(cls, root: str | Path) -> DatasetInfo:
        path = Path(root).expanduser() / "dataset.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no dataset.json (write the dataset first, or point "
                                    "data.path at the directory that holds it)") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
            if data["image_key"] not in ("png", "latent.npy"):
                raise ValueError(f"image_key {data['image_key']!r} is not 'png' or 'latent.npy'")
            splits = {k: tuple(ShardInfo(**s) for s in v["shards"])
                      for k, v in data["splits"].items()}
            return cls(Path(root).expanduser(), data["image_key"], int(data["image_size"]),
                       int(data["channels"]), str(data["text_encoder"]), int(data["text_dim"]),
                       int(data["text_len"]), splits, dict(data.get("params", {})),
                       str(data.get("content_hash", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: malformed dataset description "
                             f"({type(exc).__name__}: {exc})") from exc
