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



def test_every_steering_field_has_a_kind_and_parse_setting_gives_it():
    """parse_setting reads each field's kind from SETTING_FIELDS (the one table, also used to read settings back
    from JSON): every SteeringConfig field is in it, and each kind parses to its type."""
    from dataclasses import fields

    from tl_langneurons.steer.methods import SETTING_FIELDS, SteeringConfig, parse_setting

    assert {f.name for f in fields(SteeringConfig)} <= set(SETTING_FIELDS)
    st = parse_setting("x=add:k=12.0,alpha=1.5,layers=last,resid_alpha=0.1,keep_norm=yes,steer_tokens=8,spread=even")[1]
    assert (st.k, st.alpha, st.layers, st.keep_norm, st.steer_tokens, st.spread) == (12, 1.5, "last", True, 8, "even")
    assert type(st.k) is int and type(st.steer_tokens) is int
    assert parse_setting("x=clamp:value=2.5")[1].value == 2.5 and parse_setting("x=clamp:value=zero")[1].value == "zero"
    st = parse_setting("x=add:which=top,equal_norm=total,band_alphas=last:0.5,source=fr,restore_norm=no")[1]
    assert (st.which, st.equal_norm, st.band_alphas, st.source, st.restore_norm) == ("top", "total", "last:0.5", "fr",
                                                                                       False)
    with pytest.raises(LangNeuronsError, match="k must be a whole number"):
        parse_setting("x=add:k=1.5")
