"""The one cell pipeline (``evaluate/cells.py``): a cell's fields, ``measure`` against scoring the samples
and the unsteered twins by hand, a twin generated once however many groups share it, and the deprecated
names of the earlier API."""

from __future__ import annotations

import warnings

import pytest

from tl_langneurons import MultilingualCorpus
from tl_langneurons.detect.neurons import find_neurons
from tl_langneurons.errors import LangNeuronsError
from tl_langneurons.evaluate.cells import Cell, CellRunner, steered
from tl_langneurons.evaluate.control import EvaluateConfig
from tl_langneurons.steer.methods import SteeringConfig
from tl_langneurons.steer.prompts import token_prompts


@pytest.fixture(scope="module")
def setup(tiny_llama):
    sel, held = MultilingualCorpus.bundled().split(0.1, seed=0)
    neurons = find_neurons(tiny_llama, sel.sample(12, seed=1), k=10, progress=False)
    prompts = token_prompts(tiny_llama.tokenizer, held.texts["en"], 2, 0, "en")
    return neurons, prompts


def test_cell_fields_and_checks():
    add = SteeringConfig(method="add", which="top", k=7)
    cell = Cell("de", add, seeds=[3, 4], prompt=[5, 6])
    assert (cell.condition, cell.k, cell.seeds, cell.prompt) == ("top", 7, (3, 4), (5, 6))
    assert cell.twin() == Cell("de", None, (3, 4), (5, 6)) and cell.twin().condition == "none"
    assert steered("de", SteeringConfig(method="add"), "top", 7, [3, 4], [5, 6]) == cell
    with pytest.raises(LangNeuronsError, match="needs a target"):
        Cell(None, add)
    with pytest.raises(LangNeuronsError, match="needs its k"):
        Cell("de", SteeringConfig(method="clamp"))
    assert Cell("de", SteeringConfig(method="diffmean", layer=1)).k == 0  # residual methods need no k


def test_measure_equals_scoring_the_cells_and_twins_by_hand(tiny_llama, setup):
    neurons, prompts = setup
    cfg = EvaluateConfig(languages=["de", "ja"], samples=2, max_new_tokens=5, ablation_ks=[], batch_size=5)
    runner = CellRunner(tiny_llama, neurons, cfg, None, None, progress=False)
    seeds = (1, 2)
    add = SteeringConfig(method="add", alpha=2.0)
    groups = [[steered(t, add, "both", 10, seeds, p) for p in prompts] for t in ("de", "ja")]
    groups.append([Cell("de", SteeringConfig(method="diffmean", layer=1, alpha=0.5, k=10), seeds, prompts[0])])
    measured = runner.measure(groups)
    # every cell and the two twins (prompts x seeds, shared by the three groups) generated once
    assert runner.generated == (2 * 2 + 1) * 2 + 2 * 2
    for g, m in zip(groups, measured):
        target = g[0].target
        rows = [r for c in g for r in runner.samples(c)]
        twin = [r for c in g for r in runner.samples(c.twin())]
        assert m.samples == rows and m.cells == g
        assert m.score == runner.score(rows, target)
        assert m.baseline == runner.score(twin, target)
        assert m.row() == m.score.steering_row(m.baseline.fluent)
        assert m.retention == (m.score.fluent / m.baseline.fluent if m.baseline.fluent else None)
    assert runner.generated == (2 * 2 + 1) * 2 + 2 * 2  # read back above, not generated again
    assert measured[0].samples != measured[1].samples  # the targets steer apart
    with pytest.raises(LangNeuronsError, match="one target"):
        runner.measure([[Cell("de"), Cell("ja")]])
    # the earlier tuples are refused (by the runner, or first by the tests' type checker)
    with pytest.raises(TypeError, match="Cell"):
        runner.samples_many([("de", "both", 10, [1])])


def test_deprecated_names_warn_and_still_work():
    import tl_langneurons
    from tl_langneurons.steer import pairs as compare
    from tl_langneurons.steer.generation import Sample

    with pytest.warns(DeprecationWarning, match="SteerPairsConfig"):
        assert tl_langneurons.SteerConfig is compare.SteerPairsConfig
    pair = compare.SteerPair(Sample(1, [1], "a"), Sample(1, [2], "b"))
    with pytest.warns(DeprecationWarning, match="steered"):
        assert pair.with_clamp is pair.steered
    from tl_langneurons.evaluate.samples import store_of
    with pytest.warns(DeprecationWarning, match="store="):
        assert store_of(None, "somewhere").folder.name == "somewhere"
    with pytest.raises(LangNeuronsError, match="store= alone"):
        store_of("a", "b")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store_of("x").folder.name == "x"
