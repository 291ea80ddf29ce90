"""`compare`: the placement of several find folders side by side (paper Fig. 2 across models)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tl_langneurons.analyses.compare import compare_placement
from tl_langneurons.analyses.placement import layer_counts, quarter_shares
from tl_langneurons.cli import main
from tl_langneurons.detect.neurons import LanguageNeurons


@pytest.fixture(scope="module")
def two_runs(tiny_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    for arch, k in (("llama", "5%"), ("bloom", "20")):
        assert main(["find", "--model", str(tiny_dirs[arch]), "--corpus", "bundled", "--n-per-lang", "6",
                     "--k", k, "--out", str(root / arch), "--quiet"]) == 0
    return root / "llama", root / "bloom"


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_compare_writes_the_figure_and_the_quarter_shares(two_runs, tmp_path, capsys):
    llama, bloom = two_runs
    out = tmp_path / "cmp"
    assert main(["compare", str(llama), str(bloom), "--labels", "L,B", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("placement.png", "placement.md", "placement.csv", "placement.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "placement.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "placement.json").read_text())
    assert [m["label"] for m in data["models"]] == ["L", "B"]
    # every row is the existing per-layer count and quarter share of that folder
    for label, folder in (("L", llama), ("B", bloom)):
        n = LanguageNeurons.load(folder)
        for lang in n.languages:
            for which in ("top", "bottom"):
                row = next(r for r in data["rows"] if (r["model"], r["lang"], r["which"]) == (label, lang, which))
                f, l = quarter_shares(layer_counts(n, lang, which))
                assert row["first_quarter"] == pytest.approx(f) and row["last_quarter"] == pytest.approx(l)
                assert row["ends"] == pytest.approx(f + l)
                assert row["even_ends"] == pytest.approx(2 * max(1, n.index.n_layers // 4) / n.index.n_layers)
        m = next(m for m in data["models"] if m["label"] == label)
        assert m["k"] == n.k and m["n_layers"] == n.index.n_layers == 3
    assert "| L | " in printed and "in the first and last quarter" in printed


def test_profiles_are_shares_scaled_by_depth(two_runs):
    res = compare_placement(list(two_runs))
    for m in res.models:
        for which in ("top", "bottom"):
            p = m.profile(res.languages, which)
            assert p.mean() == pytest.approx(1.0)  # shares sum to 1, times the layers
            assert np.all(np.diff(m.depth()) > 0) and 0 < m.depth()[0] < m.depth()[-1] < 1


def test_compare_bad_input(two_runs, tmp_path, capsys, monkeypatch):
    llama, bloom = two_runs
    out = tmp_path / "cmp"

    def one_line(code, needle):
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], err
        assert not out.exists()

    one_line(main(["compare", str(llama), "--out", str(out)]), "two or more find folders")
    one_line(main(["compare", str(llama), str(bloom), "--labels", "a", "--out", str(out)]), "1 label(s) for 2")
    one_line(main(["compare", str(llama), str(tmp_path), "--out", str(out)]), "holds no neurons")
    # the same folder twice: as given, by a link, by another spelling (no duplicate rows)
    one_line(main(["compare", str(llama), str(bloom), str(llama), "--out", str(out)]), "is the same folder")
    (tmp_path / "link").symlink_to(llama)
    one_line(main(["compare", str(llama), str(tmp_path / "link"), "--out", str(out)]), "are the same folder")
    one_line(main(["compare", str(bloom), f"{bloom.parent}/./{bloom.name}/", "--out", str(out)]), "are the same folder")
    with monkeypatch.context() as m:
        m.chdir(llama.parent)
        one_line(main(["compare", llama.name, f"./{llama.name}", "--out", str(out)]), "are the same folder")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    code = main(["compare", str(llama), str(bloom), "--out", str(tmp_path / "mine")])
    err = capsys.readouterr().err
    assert code == 2 and "did not write" in err and (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_empty_sets_show_as_empty_not_zero(two_runs, tmp_path, capsys):
    """A lape find has no bottom sets and keeps no neuron of some languages: those sets have no placement,
    shown as "-" and "empty" with the reason, never as 0% (nor a 0.000 share)."""
    llama, _ = two_runs
    lape = tmp_path / "lape"
    assert main(["find", "--model", str(LanguageNeurons.load(llama).meta["model"]), "--corpus", "bundled",
                 "--n-per-lang", "6", "--k", "5%", "--method", "lape", "--out", str(lape), "--quiet"]) == 0
    n = LanguageNeurons.load(lape)
    empty_top = [l for l in n.languages if len(n.sets[l]["top"].neurons) == 0]
    assert empty_top and len(empty_top) < len(n.languages)  # some top sets empty, some not
    find_printed = capsys.readouterr().out
    layers = (lape / "layers.md").read_text()  # find's own placement table: "-" for an empty set, not 0.000
    assert all(line.rstrip().endswith("| - | - | - |") for line in layers.splitlines() if "| bottom |" in line)
    assert f"| {empty_top[0]} | top |" in layers
    assert "bottom empty" in find_printed and "bottom 0% / 0%" not in find_printed
    out = tmp_path / "cmp"
    assert main(["compare", str(lape), str(llama), "--labels", "L,A", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "placement.json").read_text())["rows"]
    for r in rows:
        empty = r["model"] == "L" and (r["which"] == "bottom" or r["lang"] in empty_top)
        assert (r["neurons"] == 0) == empty and (r["ends"] is None) == empty, r
        assert (r["first_quarter"] is None and r["last_quarter"] is None) == empty
    assert "- L bottom: empty (lape selects top sets only), no placement" in printed
    assert "- L top: " in printed and "- L bottom: 0.0%" not in printed
    assert f"L top {', '.join(empty_top)}: lape kept no neuron of the language" in printed
    assert f"| L | {empty_top[0]} | top | 0 | - | - | - |" in printed and "| L | en | bottom | 0.000" not in printed
    assert "L,en,bottom,0,,,," in (out / "placement.csv").read_text()
