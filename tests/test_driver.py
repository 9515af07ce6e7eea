"""Driver pieces that need no cluster: concurrency from resources, the model template."""

import pytest

from scaling.model import ModelShape
from search.driver import ClusterError, model_template, trial_concurrency
from search.spec import parse_spec


def spec(**resources):
    return parse_spec({"name": "d", "budgets": [1e11, 1e12], "resources": resources})


def test_a_single_worker_trial_reserves_its_cpus_in_its_own_actor():
    k, res = trial_concurrency(spec(), {"CPU": 2.0, "trial_slot": 2.0})
    assert k == 2 and res == {"CPU": 1.0}
    k, res = trial_concurrency(spec(cpus_per_worker=2, gpus_per_worker=1), {"CPU": 16.0,
                                                                           "GPU": 2.0})
    assert k == 2 and res == {"CPU": 2.0, "GPU": 1.0}


def test_multi_worker_trials_fill_the_cpus_with_their_worker_groups():
    k, res = trial_concurrency(spec(workers=2), {"CPU": 4.0, "trial_slot": 2.0})
    assert k == 2 and res == {"CPU": 0.0, "trial_slot": 1}


def test_without_slots_a_sliver_of_cpu_keeps_worker_groups_whole():
    # 2 trials x (2 worker CPUs + 0.01) would not fit in 4 CPUs: the second group would time out.
    k, res = trial_concurrency(spec(workers=2), {"CPU": 4.0})
    assert k == 1 and res == {"CPU": 0.01}
    assert trial_concurrency(spec(workers=2), {"CPU": 16.0})[0] == 7


def test_gpus_and_caps_bound_concurrency():
    s = spec(workers=2, cpus_per_worker=1, gpus_per_worker=1)
    assert trial_concurrency(s, {"CPU": 64.0, "GPU": 8.0, "trial_slot": 100})[0] == 4
    capped = spec(max_concurrent_trials=3)
    assert trial_concurrency(capped, {"CPU": 64.0, "trial_slot": 100})[0] == 3


def test_a_trial_larger_than_the_cluster_is_refused_with_numbers():
    with pytest.raises(ClusterError, match="one trial needs 4 CPUs and 0 GPUs .* has 2 CPUs"):
        trial_concurrency(spec(workers=4), {"CPU": 2.0})


def test_model_template_follows_the_dataset(tiny_data):
    t = model_template(parse_spec({"name": "d", "budgets": [1e11, 1e12],
                                   "model": {"patch_size": 2}}), tiny_data)
    assert (t.image_size, t.in_channels, t.text_dim, t.text_len, t.patch_size) == (
        tiny_data.image_size, tiny_data.channels, tiny_data.text_dim, tiny_data.text_len, 2)
    assert t.shape == ModelShape(1, 16, 1)


def test_a_prepared_dataset_must_match_the_encoders_the_spec_names(tiny_data):
    from search.driver import prepare_data
    from search.spec import SpecError

    base = {"name": "d", "budgets": [1e11, 1e12]}
    ok = parse_spec({**base, "data": {"source": "path", "path": str(tiny_data.root),
                                      "text_encoder": tiny_data.text_encoder}})
    assert prepare_data(ok, print).content_hash == tiny_data.content_hash
    bad = parse_spec({**base, "data": {"source": "path", "path": str(tiny_data.root),
                                       "text_encoder": "t5-small", "autoencoder": "/vae"}})
    with pytest.raises(SpecError) as err:
        prepare_data(bad, print)
    assert "data.text_encoder: 't5-small', but" in str(err.value)
    assert "data.autoencoder: '/vae', but" in str(err.value) and "holds pixels" in str(err.value)
