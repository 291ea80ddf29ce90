"""The placement and overlap figures at 2, 6 and 15 languages: every language labelled once, the figure
growing with the languages, panels in rows of at most five, counts written only where they fit, languages
grouped by script; the figures are read back from their matplotlib objects and the PNG header."""

import struct

import numpy as np
import pytest

from tl_langneurons.report import plots

L15 = "en de fr es zh ja ar hi id it ko pt ru tr vi".split()  # the FLORES-200 dev 15 run's order
L6 = "en de fr es zh ja".split()
L2 = ["en", "de"]
GROUPED15 = "en de fr es id it pt tr vi zh ja ar hi ko ru".split()


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def counts_of(langs, n_layers=18):
    rng = np.random.default_rng(0)
    return {l: {w: rng.integers(0, 50, n_layers) for w in ("top", "middle", "bottom")} for l in langs}


def overlap_of(langs, k=1000, high=400):
    rng = np.random.default_rng(1)
    ov = rng.integers(0, high, (len(langs), len(langs)))
    ov = (ov + ov.T) // 2
    np.fill_diagonal(ov, 2 * k)
    return ov


def test_scripts_group_languages_keeping_their_order():
    assert [plots.script_of(l) for l in ("en", "ru", "zh", "ja", "ko", "hi", "ar", "vi")] == [
        "Latin", "Cyrillic", "Han", "Japanese", "Hangul", "Devanagari", "Arabic", "Latin"]
    assert plots.script_of("arb_Arab") == "Arab"  # a FLORES-style code names its script
    assert plots.by_script(L15) == GROUPED15
    assert plots.by_script(L6) == L6  # already grouped: unchanged
    assert plots.grid_shape(2) == (1, 2) and plots.grid_shape(6) == (2, 3) and plots.grid_shape(15) == (3, 5)
    assert plots.grid_shape(16) == (4, 4)


@pytest.mark.parametrize("langs,grid", [(L2, (1, 2)), (L6, (2, 3)), (L15, (3, 5))])
def test_layer_panels_label_every_language(langs, grid, tmp_path):
    fig = plots.layer_histograms(counts_of(langs), 1000, "mlp_post", tmp_path / "layers.png")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split()[0] for ax in axes] == plots.by_script(langs)  # one panel each, grouped
    assert all(len(ax.get_lines()) == 3 for ax in axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["top", "middle", "bottom"]  # one legend
    rows, cols = grid
    assert tuple(fig.get_size_inches()) == pytest.approx((2.9 * cols, 2.2 * rows))
    w, h = png_size(tmp_path / "layers.png")
    assert 0.8 * 2.9 * cols * plots.DPI < w < 1.3 * 2.9 * cols * plots.DPI and h < 1.5 * 2.2 * rows * plots.DPI
    labelled = [ax for ax in axes if ax.get_xlabel() == "layer"]  # the last panel of every column
    assert len(labelled) == cols and all(ax.xaxis.get_ticklabels()[0].get_visible() for ax in labelled)
    if len({plots.script_of(l) for l in langs}) > 1:
        assert axes[-1].get_title() == f"{plots.by_script(langs)[-1]} ({plots.script_of(plots.by_script(langs)[-1])})"


@pytest.mark.parametrize("langs", [L2, L6, L15])
def test_overlap_labels_every_language_and_writes_every_count(langs, tmp_path):
    ov = overlap_of(langs)
    fig = plots.overlap_heatmap(ov, langs, 2000, tmp_path / "overlap.png")
    ax = fig.axes[0]
    order = plots.by_script(langs)
    assert [t.get_text() for t in ax.get_xticklabels()] == order
    assert [t.get_text() for t in ax.get_yticklabels()] == order
    pos = [langs.index(l) for l in order]
    written = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert written == {(i, j): str(ov[pos[i], pos[j]]) for i in range(len(langs)) for j in range(len(langs)) if i != j}
    scripts = [plots.script_of(l) for l in order]
    assert len(ax.get_lines()) == 2 * sum(a != b for a, b in zip(scripts, scripts[1:]))  # a line between groups
    w, h = png_size(tmp_path / "overlap.png")
    assert w < 1.3 * fig.get_size_inches()[0] * plots.DPI and h < 1.3 * fig.get_size_inches()[1] * plots.DPI
    img = ax.get_images()[0].get_array()
    assert img[0, 1] == pytest.approx(100 * ov[pos[0], pos[1]] / 2000) and np.ma.is_masked(img[0, 0])


def test_overlap_grows_with_the_languages_and_leaves_out_counts_that_do_not_fit(tmp_path):
    sizes = [plots.overlap_heatmap(overlap_of(l), l, 2000, tmp_path / f"{len(l)}.png").get_size_inches()
             for l in (L2, L6, L15)]
    assert sizes[0][0] < sizes[1][0] < sizes[2][0] and sizes[2][0] <= 12
    many = [f"l{i}" for i in range(60)]  # unknown codes: one group
    fig = plots.overlap_heatmap(overlap_of(many, k=10 ** 6, high=10 ** 6), many, 2 * 10 ** 6, tmp_path / "many.png")
    assert not fig.axes[0].texts and "overlap.md" in fig.axes[0].get_title()
    assert len(fig.axes[0].get_xticklabels()) == 60


def test_k_ablation_and_pareto_give_each_of_15_languages_its_own_colour(tmp_path):
    rows = [{"lang": l, "k": k, "rate": 0.5, "bleu": 0.1, "label": str(k), "retention": 0.9}
            for l in L15 for k in (1, 10)]
    fig = plots.k_ablation(rows, tmp_path / "k.png")
    lines = fig.axes[1].get_lines()
    assert len({tuple(l.get_color()) for l in lines}) == 15
    assert sorted(t.get_text() for t in fig.axes[1].get_legend().get_texts()) == sorted(L15)
    fig = plots.pareto(rows, tmp_path / "p.png")
    colours = {tuple(np.round(c.get_facecolor()[0], 4)) for c in fig.axes[0].collections}
    assert len(colours) == 15 and len(fig.axes[0].get_legend().get_texts()) == 15


class Model:
    def __init__(self, label, n_layers):
        self.label, self.n_layers, self.k = label, n_layers, 10

    def depth(self):
        return (np.arange(self.n_layers) + 0.5) / self.n_layers

    def profile(self, langs, which):
        return np.ones(self.n_layers)


@pytest.mark.parametrize("langs", [L2, L15])
def test_placement_comparison_labels_every_language_top_and_bottom(langs, tmp_path):
    fig = plots.placement_comparison([Model("a", 18), Model("b", 24)], langs, tmp_path / "placement.png")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert sorted(titles) == sorted(f"{l} {w}" for l in [*langs, "all"] for w in ("top", "bottom"))  # each once
    assert [t.split()[0] for t in titles if t.endswith(" top")] == [*plots.by_script(langs), "all"]  # grid order
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a (18 layers, k=10)", "b (24 layers, k=10)"]
    rows, cols = plots.grid_shape(len(langs) + 1)
    assert tuple(fig.get_size_inches()) == pytest.approx((2.6 * cols, 2.5 * 2 * rows))
    assert png_size(tmp_path / "placement.png")[0] < 1.3 * 2.6 * cols * plots.DPI


def test_report_draws_the_placement_figures_again_from_saved_neurons(tmp_path):
    """A find folder without its figures (tests/data/legacy_run leaves them out) gets them from `report`, no
    model loaded; drawn twice, they are byte-identical."""
    import shutil
    from pathlib import Path

    from tl_langneurons.report.build import build_report

    d = tmp_path / "run"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "legacy_run", d)
    assert not (d / "layers.png").exists() and not (d / "overlap.png").exists()
    report = build_report(d).read_text()
    assert "![layers](layers.png)" in report and "![overlap](overlap.png)" in report
    first = {n: (d / n).read_bytes() for n in ("layers.png", "overlap.png")}
    w, h = png_size(d / "layers.png")
    assert 1.5 * h < w < 2.5 * h  # 6 languages: 2 rows of 3 panels, not one row of 6
    build_report(d)
    assert first == {n: (d / n).read_bytes() for n in ("layers.png", "overlap.png")}


def test_a_one_layer_site_is_drawn_as_bars_at_its_layer_and_named_so(tmp_path):
    counts = {l: {w: np.zeros(12, dtype=int) for w in ("top", "middle", "bottom")} for l in L6}
    for c in counts.values():
        for w in c:
            c[w][11] = 10  # an SAE's latents on blocks.11: every unit at layer 11
    site = "blocks.11.hook_resid_post.hook_sae_acts_post"
    fig = plots.layer_histograms(counts, 10, site, tmp_path / "layers.png")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert "one-layer site, every unit at layer 11" in fig._suptitle.get_text()
    for ax in axes:  # three bars at layer 11 (top, middle, bottom), no curve rising to it from the layers before
        assert not ax.get_lines() and len(ax.patches) == 3
        assert sorted(round(p.get_x() + p.get_width() / 2, 2) for p in ax.patches) == [10.73, 11.0, 11.27]
        assert [p.get_height() for p in ax.patches] == [10, 10, 10] and ax.get_xlim() == (-0.5, 11.5)
    many = plots.layer_histograms(counts_of(L2), 10, "mlp_post", tmp_path / "many.png")
    assert "one-layer" not in many._suptitle.get_text()
