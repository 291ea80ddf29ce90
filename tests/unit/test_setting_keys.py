"""Every setting keeps the cache key and label it had before the interventions became classes: the keys and
labels of tests/data/steering_keys.json were made on main before the redesign (08d142e), and a cell or sample
is found by its key, so a drift would orphan every cached result."""

import json
from pathlib import Path

import pytest

from tl_langneurons.steer.setting import SteeringConfig

GOLDEN = json.loads((Path(__file__).parents[1] / "data" / "steering_keys.json").read_text())


@pytest.mark.parametrize("case", GOLDEN, ids=[c["label"] for c in GOLDEN])
def test_key_and_label_unchanged(case):
    cfg = SteeringConfig(**case["config"])
    assert json.loads(json.dumps(cfg.key())) == case["key"]
    assert cfg.label() == case["label"]
