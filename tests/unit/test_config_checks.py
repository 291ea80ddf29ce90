"""The declared number checks (``option(..., at_least=, positive=)``, ``check_number``): one line naming the
option; numpy numbers pass as Python's; None passes where it is the default."""

from __future__ import annotations

import numpy as np
import pytest

from tl_langneurons.config import check_number
from tl_langneurons.errors import LangNeuronsError
from tl_langneurons.evaluate.control import EvaluateConfig
from tl_langneurons.steer.generation import GenerationConfig
from tl_langneurons.steer.methods import SteeringConfig


@pytest.mark.parametrize("value,msg", [
    (0, "--n must be at least 1, got 0"), (True, "--n must be a whole number of at least 1, got True"),
    (16.0, "--n must be a whole number of at least 1, got 16.0 (write 16)"), ("3", "whole number"),
])
def test_whole_numbers(value, msg):
    with pytest.raises(LangNeuronsError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        check_number("--n", value, at_least=1)


def test_positive_numbers_and_numpy():
    check_number("--k", np.int64(5), at_least=1)
    check_number("--t", np.float32(0.8), positive=True)
    for bad in (0, -1.0, float("nan"), float("inf"), True, "0.8"):
        with pytest.raises(LangNeuronsError, match="--t must be positive and finite"):
            check_number("--t", bad, positive=True)


def test_configs_declare_their_checks():
    assert SteeringConfig(k=7, layer=0).k == 7
    for kw, msg in ((dict(k=0), "--k must be at least 1"), (dict(layer=-1), "--layer must be at least 0"),
                    (dict(steer_tokens=0), "--steer-tokens must be at least 1"),
                    (dict(n_dims=0), "--n-dims must be at least 1")):
        with pytest.raises(LangNeuronsError, match=msg):
            SteeringConfig(**kw)
    with pytest.raises(LangNeuronsError, match="--samples must be at least 1, got 0"):
        EvaluateConfig(samples=0)
    with pytest.raises(LangNeuronsError, match="--ablation-samples must be at least 1"):
        EvaluateConfig(ablation_samples=0)
    with pytest.raises(LangNeuronsError, match="temperature must be positive and finite"):
        GenerationConfig(temperature=float("nan"))
    EvaluateConfig(ablation_samples=None)  # none: the default, --samples

