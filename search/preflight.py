"""The checks of a spec that read the file system, run by `dit-scaling run` before Ray or torch is
imported and before anything is written.

`search.spec` checks what the spec alone decides; a study on a prepared dataset (`data.source =
"path"`) also needs that dataset to be there and to fit the spec: a readable `dataset.json`, an
image side the patch size divides, the encoders the spec names. Found here, each is one line in a
second; found by the driver, after Ray has started.
"""

from __future__ import annotations

from scaling.dataset_info import DatasetInfo
from search.spec import SpecError, StudySpec


def check_dataset(spec: StudySpec, source: str) -> DatasetInfo | None:
    """The prepared local dataset the spec names, checked against the spec (SpecError, one line,
    naming `source` and every problem); None for the built-in dataset, a simulated study or a
    dataset under a URI (read by the cluster, not here)."""
    d = spec.data
    if d.source != "path" or spec.simulated or not d.path or "://" in d.path:
        return None
    root = spec.data_path
    if not root.exists():
        raise SpecError(f"{source}: data.path {root} does not exist (prepare it with "
                        "`dit-scaling data prepare`, or use data.source = 'builtin')")
    if not root.is_dir():
        raise SpecError(f"{source}: data.path {root} is a file; it must be the directory holding "
                        "dataset.json")
    try:
        info = DatasetInfo.load(root)
    except (OSError, ValueError) as err:
        raise SpecError(f"{source}: data.path: {err}") from None
    problems = dataset_problems(spec, info)
    if problems:
        raise SpecError(f"{source}: the prepared dataset does not fit the spec: "
                        + "; ".join(problems))
    return info


def dataset_problems(spec: StudySpec, info: DatasetInfo) -> list[str]:
    """How a prepared dataset (local or under a URI) does not fit the spec: the patch size,
    the encoders the spec names, its train shards."""
    d, where = spec.data, f"{info.root}/dataset.json"
    problems = []
    if info.image_size % spec.model.patch_size:
        problems.append(f"model.patch_size {spec.model.patch_size} does not divide the dataset's "
                        f"image size {info.image_size} ({where})")
    if d.text_encoder and d.text_encoder != info.text_encoder:
        problems.append(f"data.text_encoder: {d.text_encoder!r}, but {where} was "
                        f"encoded with {info.text_encoder!r}")
    autoencoder = info.params.get("autoencoder") if info.image_key == "latent.npy" else None
    if d.autoencoder and d.autoencoder != autoencoder:
        problems.append(f"data.autoencoder: {d.autoencoder!r}, but {where} holds "
                        + (f"latents of {autoencoder!r}" if autoencoder else "pixels"))
    if "train" not in info.splits or not info.splits["train"]:
        problems.append(f"{where} has no train shards")
    return problems
