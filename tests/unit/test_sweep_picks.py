"""steer --from-sweep: a sweep's pick for the language becomes the steering, its neuron set and k included."""

import pytest

from tl_langneurons.errors import LangNeuronsError
from tl_langneurons.steer.pairs import SteerPairsConfig, with_sweep_pick
from tl_langneurons.steer.methods import SteeringConfig


def test_the_pick_of_the_language_is_the_steering():
    picks = {"de": SteeringConfig(method="add", alpha=1.5, k=5, which="top", positions="generated", source="prompt"),
             "fr": SteeringConfig(method="diffmean", layer=3, alpha=0.1)}
    # source=prompt: the sweep steered away from each prompt's language; --source names it for one prompt
    cfg, note = with_sweep_pick(SteerPairsConfig(lang="de", steering=SteeringConfig(source="fr")), picks)
    assert note is None and (cfg.which, cfg.k) == ("top", 5)
    assert cfg.steering == SteeringConfig(method="add", alpha=1.5, k=5, which="top", positions="generated", source="fr")
    cfg, note = with_sweep_pick(SteerPairsConfig(lang="de"), picks)
    assert cfg.steering.source is None and "--source" in note
    cfg, note = with_sweep_pick(SteerPairsConfig(lang="fr", which="bottom", k=9), picks)
    assert cfg.steering == picks["fr"] and note is None and cfg.k is None
    with pytest.raises(LangNeuronsError, match="has no setting for 'ja' \\(it searched de, fr\\)"):
        with_sweep_pick(SteerPairsConfig(lang="ja"), picks)
