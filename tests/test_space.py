import math

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from optuna_quicktune.space import DEFAULT_LORA_CONFIG, SearchSpace, lora_space


def test_lora_space_has_the_documented_parameters():
    space = lora_space()
    for name in ["learning_rate", "lora_r", "lora_alpha_ratio", "lora_dropout", "target_modules", "weight_decay",
                 "warmup_ratio", "lr_scheduler_type", "per_device_train_batch_size", "gradient_accumulation_steps",
                 "max_grad_norm", "use_dora", "use_rslora"]:
        assert name in space.distributions
    assert space.distributions["learning_rate"].log
    assert space.contains(DEFAULT_LORA_CONFIG)


def test_encoding_is_log_scaled_one_hot_and_in_unit_box():
    space = SearchSpace({
        "lr": FloatDistribution(1e-5, 1e-3, log=True),
        "n": IntDistribution(0, 10),
        "c": CategoricalDistribution(["a", "b", "c"]),
    })
    x = space.encode({"lr": 1e-4, "n": 5, "c": "b"})
    assert space.dim == 5
    np.testing.assert_allclose(x, [0.5, 0.5, 0.0, 1.0, 0.0])
    X = space.encode_many(space.sample(200, seed=0))
    assert X.min() >= 0 and X.max() <= 1


def test_decode_inverts_encode():
    space = lora_space()
    for c in space.sample(50, seed=1):
        d = space.decode(space.encode(c))
        assert space.config_id(d) == space.config_id(c)
        assert math.isclose(d["learning_rate"], c["learning_rate"], rel_tol=1e-9)


def test_fingerprint_is_stable_and_sensitive():
    a, b = lora_space(), lora_space()
    assert a.fingerprint == b.fingerprint and a == b
    changed = dict(a.distributions)
    changed["lora_r"] = IntDistribution(4, 64, log=True)
    assert SearchSpace(changed).fingerprint != a.fingerprint
    assert SearchSpace.from_json(a.to_json()) == a


def test_json_round_trip_keeps_the_encoding_layout_even_through_sorted_json():
    # A space whose order is not alphabetical, written by a JSON writer that sorts keys (as the
    # surrogate's files are): the loaded space must encode every configuration exactly as before.
    import json

    a = lora_space()
    assert a.names != sorted(a.names)
    b = SearchSpace.from_json(json.loads(json.dumps(a.to_json(), sort_keys=True)))
    assert b.names == a.names
    configs = a.sample(20, seed=0)
    np.testing.assert_array_equal(b.encode_many(configs), a.encode_many(configs))
    assert [b.decode(x) for x in a.encode_many(configs)] == configs
    data = a.to_json()
    data["order"] = data["order"][:-1]
    with pytest.raises(ValueError, match="does not name the same"):
        SearchSpace.from_json(data)


def test_sampling_is_seeded():
    assert lora_space().sample(5, seed=3) == lora_space().sample(5, seed=3)
    assert lora_space().sample(5, seed=3) != lora_space().sample(5, seed=4)


def test_bad_inputs_have_clear_errors():
    with pytest.raises(ValueError, match="non-empty"):
        SearchSpace({})
    with pytest.raises(TypeError, match="not an Optuna distribution"):
        SearchSpace({"lr": (1e-5, 1e-3)})
    with pytest.raises(ValueError, match="lacks parameter"):
        lora_space().encode({"learning_rate": 1e-4})
    with pytest.raises(ValueError, match="not one of"):
        lora_space().encode(dict(DEFAULT_LORA_CONFIG, target_modules="everything"))
    data = lora_space().to_json()
    data["fingerprint"] = "0" * 16
    with pytest.raises(ValueError, match="corrupted"):
        SearchSpace.from_json(data)


def test_suggest_records_the_space_in_a_trial():
    space = lora_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    config = space.suggest(trial)
    assert space.contains(config)
    assert set(trial.params) == set(space.names)
