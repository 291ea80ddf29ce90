"""The sweep searches what it searched before the interventions became classes: the start, stages, notes, later
and shared stages of tests/data/sweep_spaces.json were made on main before the redesign (08d142e) for each
intervention and many options; a setting's fields and k are part of its cells' keys, so a drift here would make
a resumed sweep generate anew."""

import json
from pathlib import Path

import pytest
import torch

from tl_langneurons.detect.neurons import LanguageNeurons
from tl_langneurons.evaluate.sweep import SweepConfig, _later_stages, _search_space, _shared_stages

GOLDEN = json.loads((Path(__file__).parents[1] / "data" / "sweep_spaces.json").read_text())


class _Fake(LanguageNeurons):
    """Only the parts of LanguageNeurons that are read, set by hand (a LanguageNeurons to the type checks)."""

    def __init__(self, **parts):
        self.__dict__.update(parts)


NEURONS = _Fake(residual=lambda: (torch.zeros(2, 18, 40), torch.ones(18)), k=20)


def _json(x):
    return json.loads(json.dumps(x, sort_keys=True, default=list))


@pytest.mark.parametrize("case", GOLDEN, ids=[json.dumps(c["config"], sort_keys=True) for c in GOLDEN])
def test_search_space_unchanged(case):
    cfg = SweepConfig(**case["config"])
    start, stages, notes = _search_space(cfg, NEURONS, 1000)
    assert _json(start) == case["start"]
    assert _json(stages) == case["stages"]
    assert notes == case["notes"]
    assert _json(_later_stages(cfg, NEURONS)) == case["later"]
    assert _json(_shared_stages(cfg, NEURONS, 1000) if cfg.shared_search else None) == case["shared"]
