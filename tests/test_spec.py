"""The study spec: valid specs load frozen; every bad field is named with its value."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from search.spec import SpecError, load_spec, parse_spec, study_name

DEMO = Path(__file__).resolve().parents[1] / "search" / "studies" / "demo.toml"


def test_demo_spec_loads_and_is_frozen():
    spec = load_spec(DEMO)
    assert spec.name == "demo"
    assert len(spec.budgets) >= 2
    assert spec.trainer.ema_alpha == 0.9
    with pytest.raises(ValidationError):
        spec.seed = 3


def test_defaults_resolve_under_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = parse_spec({"name": "s", "budgets": [1e11, 1e12]})
    assert spec.tracking_uri == f"sqlite:///{tmp_path / 'dit-scaling-runs' / 'mlflow.db'}"
    assert spec.storage_path == str(tmp_path / "dit-scaling-runs" / "ray")
    assert spec.convention == "6ND"


def test_local_paths_are_fixed_where_the_spec_is_read(tmp_path, monkeypatch):
    """Ray workers run in other directories: relative paths must not move with them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.pt").write_bytes(b"")
    spec = parse_spec({"name": "s", "budgets": [1e11, 1e12], "output_dir": "out",
                       "storage": {"path": "s3://bucket/ray"},
                       "eval": {"fid": True, "cfg_scale": 1.0, "fid_extractor_path": "net.pt"}})
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    assert spec.fid_cache == tmp_path / "out" / "fid-stats"
    assert spec.eval.fid_extractor_path == str(tmp_path / "net.pt")
    assert spec.storage_path == "s3://bucket/ray"
    hub = parse_spec({"name": "s", "budgets": [1e11, 1e12],
                      "eval": {"fid_extractor": "clip-vit-l-14",
                               "fid_extractor_path": "openai/clip-vit-large-patch14"}})
    assert hub.eval.fid_extractor_path == "openai/clip-vit-large-patch14"


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"name": "s", "budgets": [1e11, 2e11, -1e12]},
         "budgets[2]: -1e12 is not a positive number of FLOPs"),
        ({"name": "s", "budgets": [1e11, 2e11], "model": {"conditioning": "film"}},
         "model.conditioning: 'film' is not allowed"),
        ({"name": "s", "budgets": [1e11, 2e11], "trainer": {"batch_size": 0}},
         "trainer.batch_size: 0 is not allowed"),
        ({"name": "s", "budgets": [1e11, 2e11], "trainer": {"bach_size": 8}},
         "trainer.bach_size: unknown field"),
        ({"budgets": [1e11, 2e11]}, "name: missing"),
        ({"name": "s", "budgets": [1e11]}, "budgets: [1e11] is not allowed"),
        ({"name": "s", "budgets": [1e11, 2e11], "model": {"sizes": [1e5, 0]}},
         "model.sizes[1]: 0 is not a positive number of parameters"),
        ({"name": "s", "budgets": [1e11, 2e11], "data": {"source": "path"}},
         "needs data.path"),
        ({"name": "s", "budgets": [1e11, 1e11]}, "repeat a value"),
    ],
)
def test_bad_spec_names_field_and_value(data, expected):
    with pytest.raises(SpecError) as err:
        parse_spec(data, "bad.toml")
    assert expected in str(err.value)
    assert str(err.value).startswith("bad.toml: invalid study spec")


def test_unreadable_files(tmp_path):
    with pytest.raises(SpecError, match="no such study spec"):
        load_spec(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x\n")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(bad)


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"allocator": {"kind": "greedy"}}, "allocator.kind: 'greedy' is not allowed"),
        ({"allocator": {"tolerance": 0}}, "allocator.tolerance: 0 is not allowed"),
        ({"allocator": {"prior": "explicit"}}, "prior = 'explicit' needs prior_coefficient"),
        ({"allocator": {"prior": "paper", "prior_exponent": 0.5}}, "only read with prior"),
        ({"allocator": {"prior": "study:"}}, "allocator.prior: 'study:' is not allowed"),
        ({"allocator": {"kind": "adaptive"}, "model": {"sizes": [1e5, 2e5, 4e5]}},
         "remove model.sizes"),
        ({"trainer": {"kind": "simulated", "surface": "flat"}},
         "trainer.surface: 'flat' is not allowed"),
        ({"trainer": {"kind": "simulated", "noise": -0.1}}, "trainer.noise: -0.1 is not allowed"),
        ({"resources": {"gpus_per_trial": [{"gpus": 1}]}}, "are for trainer.kind = 'simulated'"),
        ({"trainer": {"kind": "simulated"},
          "resources": {"gpus_per_trial": [{"max_params": 1e8, "gpus": 2},
                                           {"max_params": 1e7, "gpus": 4}]}},
         "gpus_per_trial: max_params [1e8, 1e7] must increase"),
        ({"trainer": {"kind": "simulated"},
          "resources": {"gpus_per_trial": [{"gpus": 2}, {"max_params": 1e7, "gpus": 4}]}},
         "only the last tier may leave out max_params"),
        ({"trainer": {"kind": "simulated"},
          "resources": {"gpus_per_trial": [{"max_params": 1e7, "gpus": 0}]}},
         "resources.gpus_per_trial[0].gpus: 0 is not allowed"),
        ({"resources": {"mfu": 1.5}}, "resources.mfu: 1.5 is not allowed"),
    ],
)
def test_allocator_simulation_and_gpu_rule_fields_are_validated(extra, expected):
    with pytest.raises(SpecError) as err:
        parse_spec({"name": "s", "budgets": [1e11, 2e11], **extra}, "bad.toml")
    assert expected in str(err.value)


def test_gpu_rule_picks_the_first_tier_that_fits():
    spec = parse_spec({"name": "s", "budgets": [1e17, 1e18], "trainer": {"kind": "simulated"},
                       "resources": {"gpus_per_trial": [{"max_params": 5e7, "gpus": 1},
                                                        {"max_params": 3e8, "gpus": 4},
                                                        {"gpus": 8}]}})
    r = spec.resources
    assert [r.gpus_for(n) for n in (1e6, 5e7, 6e7, 3e8, 2e9)] == [1, 1, 4, 4, 8]
    assert spec.simulated and spec.allocator.kind == "fixed"


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"eval": {"fid": True}},
         "eval.cfg_scale = 1.5 (classifier-free guidance) needs trainer.caption_dropout > 0"),
        ({"eval": {"fid": True, "cfg_scale": 1.0, "fid_samples": 2048}},
         "eval.fid_samples = 2048 exceeds data.val_samples = 1024"),
        ({"eval": {"fid_extractor": "vgg"}}, "eval.fid_extractor: 'vgg' is not allowed"),
        ({"trainer": {"caption_dropout": 1.0}}, "trainer.caption_dropout: 1 is not allowed"),
        ({"data": {"autoencoder": "/vae"}}, "data.autoencoder applies to prepared datasets"),
    ],
)
def test_eval_and_dataset_fields_are_checked(extra, expected):
    with pytest.raises(SpecError) as err:
        parse_spec({"name": "s", "budgets": [1e11, 2e11], **extra})
    assert expected in str(err.value)


def test_fid_with_guidance_and_caption_dropout_is_accepted():
    spec = parse_spec({"name": "s", "budgets": [1e11, 2e11], "trainer": {"caption_dropout": 0.1},
                       "eval": {"fid": True, "fid_extractor": "clip-vit-l-14"}})
    assert spec.eval.cfg_scale == 1.5 and spec.fid_cache == spec.output_path / "fid-stats"


def test_demo_fid_spec_is_the_demo_plus_fid():
    demo, fid = load_spec(DEMO), load_spec(DEMO.with_name("demo_fid.toml"))
    assert fid.eval.fid and not demo.eval.fid and fid.trainer.caption_dropout > 0
    assert fid.budgets == demo.budgets and fid.model == demo.model and fid.data == demo.data


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"trainer": {"precision": "fp16"}}, "trainer.precision: 'fp16' is not allowed"),
        ({"trainer": {"batch_size": 30}, "resources": {"workers": 4}},
         "trainer.batch_size 30 does not split evenly over resources.workers = 4"),
        ({"trainer": {"batch_size": 32, "micro_batch": 3}, "resources": {"workers": 2}},
         "trainer.micro_batch 3 does not divide the 16 samples each worker takes per step"),
        ({"resources": {"fsdp_min_params": 0}},
         "resources.fsdp_min_params: 0 is not a positive number of parameters"),
        ({"trainer": {"lr_rule": {"ref_width": 0}}}, "trainer.lr_rule.ref_width: 0 is not allowed"),
        ({"model": {"depth": 0}}, "model.depth: 0 is not allowed"),
    ],
)
def test_training_fields_are_checked(extra, expected):
    with pytest.raises(SpecError) as err:
        parse_spec({"name": "s", "budgets": [1e11, 2e11], **extra})
    assert expected in str(err.value)


def test_gpu_training_fields_parse():
    spec = parse_spec({"name": "s", "budgets": [1e11, 2e11],
                       "trainer": {"batch_size": 1024, "micro_batch": 64, "precision": "bf16",
                                   "compile": True, "peak_flops": 989e12,
                                   "lr_rule": {"ref_width": 512, "lr_exponent": 1.0},
                                   "lr_sweep": {"factors": [0.5, 1, 2]}},
                       "resources": {"workers": 8, "fsdp_min_params": 3e8}})
    assert spec.trainer.micro_batch == 64 and spec.trainer.lr_sweep.factors == [0.5, 1, 2]
    assert spec.resources.fsdp_min_params == 3e8 and spec.trainer.lr_rule.lr_exponent == 1.0


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"name": "s", "budgets": [2e11, 1e11]},
         "budgets [2e11, 1e11] must be given smallest first ([1e11, 2e11])"),
        ({"name": "s", "budgets": ["1e11", 2e11]},
         "budgets[0]: '1e11' is not a number of FLOPs (write it without quotes)"),
        ({"name": "s", "budgets": [1e11, 2e11], "model": {"sizes": ["1e5"]}},
         "model.sizes[0]: '1e5' is not a number of parameters"),
        ({"name": "s", "budgets": [1e11, 2e11], "data": {"image_size": 30}},
         "data.image_size 30 is not divisible by model.patch_size 4"),
        ({"name": "s", "budgets": [1e11, 2e11], "trainer": {"kind": "simulated"},
          "model": {"patch_size": 5}}, "data.image_size 32 is not divisible by model.patch_size 5"),
    ],
)
def test_budget_order_number_types_and_patch_shape_are_checked(data, expected):
    with pytest.raises(SpecError) as err:
        parse_spec(data, "bad.toml")
    assert expected in str(err.value)


def test_every_problem_is_named_on_one_line():
    with pytest.raises(SpecError) as err:
        parse_spec({"name": "../x", "budgets": [1e11, -1], "trainer": {"bach_size": 8}}, "b.toml")
    text = str(err.value)
    assert "\n" not in text and text.startswith("b.toml: invalid study spec: ")
    assert "name: '../x' is not allowed" in text and "budgets[1]: -1" in text
    assert "trainer.bach_size: unknown field" in text


def test_integer_budgets_are_numbers(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\nbudgets = [100000000000, 2e11]\n')
    assert load_spec(path).budgets == [1e11, 2e11]


def test_binary_and_directory_specs_are_refused(tmp_path):
    binary = tmp_path / "b.toml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(SpecError, match="not a text file"):
        load_spec(binary)
    with pytest.raises(SpecError, match="is a directory, not a study spec file"):
        load_spec(tmp_path)


@pytest.mark.parametrize("name", ["demo", "a.b-c_1", "X" * 100])
def test_study_names_that_are_allowed(name):
    assert study_name(name) == name


@pytest.mark.parametrize("name", ["", "..", "../x", "a/b", ".hidden", "-x", "x" * 101, "a b"])
def test_study_names_that_could_leave_their_folder_are_refused(name):
    with pytest.raises(SpecError, match="is not a study name"):
        study_name(name)
