"""A prompted sweep on several held-out genres (``--heldout A+B``): each genre gives its own prompts, the
pick is on all of them, every test row carries its scores genre by genre, and those equal a sweep on that
genre alone for the settings both report; the texts find selected on are left out of the genres."""

from __future__ import annotations

import json

import pytest

from tl_langneurons import MultilingualCorpus
from tl_langneurons.cli import main
from tl_langneurons.detect.corpus import find_texts
from tl_langneurons.detect.neurons import LanguageNeurons
from tl_langneurons.errors import LangNeuronsError
from tl_langneurons.evaluate.sweep import SweepConfig, heldout_genres, run_sweep
from tl_langneurons.steer.prompts import split_prompts

LANGS = ("en", "de", "ja")


def _write(folder, texts: dict[str, list[str]]):
    folder.mkdir()
    for lang, ts in texts.items():
        (folder / f"{lang}.txt").write_text("\n".join(ts) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def setup(tiny_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("genres")
    assert main(["find", "--model", str(tiny_dirs["llama"]), "--corpus", "bundled", "--n-per-lang", "12", "--k", "20",
                 "--out", str(root / "n"), "--device", "cpu", "--quiet"]) == 0
    neurons = LanguageNeurons.load(root / "n")
    used = find_texts(neurons.meta, neurons.languages)
    assert all(len(used[l]) == 12 for l in LANGS)
    bundled = MultilingualCorpus.bundled()
    rest = {l: [t for t in bundled.texts[l] if t not in used[l]] for l in bundled.languages}
    a = _write(root / "newsish", {l: ts[:40] for l, ts in rest.items()})
    b = _write(root / "chatty", {l: ts[40:80] for l, ts in rest.items()})
    full = _write(root / "everything", bundled.texts)
    return root, neurons, a, b, full


def test_genres_leave_out_the_find_texts(setup):
    root, neurons, a, _, full = setup
    genres, dropped = heldout_genres(f"{a}+{full}", neurons, genres=True)
    assert list(genres) == ["newsish", "everything"]
    every = neurons.languages
    assert dropped == {"everything": {l: 12 for l in every}}  # find's 12 texts per language, found and left out
    assert all(len(genres["everything"].texts[l]) == len(MultilingualCorpus.bundled().texts[l]) - 12 for l in every)
    assert heldout_genres(str(a), neurons) == ({str(a): MultilingualCorpus.load(str(a), languages=neurons.languages)}, {})
    # a genre with nothing left of a language once find's texts are out: one clear line
    with pytest.raises(LangNeuronsError, match="use held-out text apart from the find corpus"):
        heldout_genres(f"{a}+bundled", LanguageNeurons(**{**vars(neurons), "meta": {
            **neurons.meta, "corpus_spec": "bundled", "n_per_lang": None}}), genres=True)
    # the find corpus not at hand: said, nothing left out
    moved = LanguageNeurons(**{**vars(neurons), "meta": {**neurons.meta, "corpus_spec": str(root / "gone")}})
    assert "unchecked" in heldout_genres(f"{a}+{full}", moved, genres=True)[1]


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_sweep_on_two_genres_reports_each_as_a_sweep_on_it_alone(setup, tiny_llama):
    root, neurons, a, b, _ = setup
    kw = dict(method="add", languages=list(LANGS), k_fractions=("10%",), alphas=(0.5, 2.0), layer_sets=("all",),
              val_prompts=1, test_prompts=2, val_samples=1, test_samples=2, max_new_tokens=5, batch_size=16,
              temperature=0.1)  # near-greedy: the tiny model's text loops, some of it fails the gate
    both = run_sweep(tiny_llama, neurons, None, SweepConfig(heldout=f"{a}+{b}", genres=True, **kw), root / "both",
                     progress=False)
    prompts = both.meta["prompts"]
    for lang in LANGS:  # each genre's prompts in turn, as a sweep on that genre alone draws them
        texts = {g: MultilingualCorpus.load(str(f)).texts[lang] for g, f in (("newsish", a), ("chatty", b))}
        want = {g: split_prompts(tiny_llama.tokenizer, ts, 2, 1, lang) for g, ts in texts.items()}
        assert prompts["test"][lang] == want["newsish"][0] + want["chatty"][0]
        assert prompts["val"][lang] == want["newsish"][1] + want["chatty"][1]
        assert prompts["genre"]["test"][lang] == ["newsish"] * 2 + ["chatty"] * 2
    assert all(set(r["genres"]) == {"newsish", "chatty"} for r in both.test)
    # the settings both sweeps report (unsteered, the paper's clamp) score on a genre as on that genre alone
    for folder, name in ((a, "newsish"), (b, "chatty")):
        alone = run_sweep(tiny_llama, neurons, None, SweepConfig(heldout=str(folder), **kw), root / f"alone-{name}",
                          progress=False)
        assert all("genres" not in r for r in alone.test)
        for r in alone.test:
            if r["setting"] in ("none", "paper clamp k=1000"):
                got = next(x for x in both.test if (x["lang"], x["setting"]) == (r["lang"], r["setting"]))["genres"][name]
                for k in ("rate", "gated_rate", "fluent", "retention"):
                    assert got[k] == r[k], (name, r["lang"], r["setting"], k)
                assert got["nll"] == pytest.approx(r["nll"], abs=1e-5)
            if r["setting"] == "none":  # the model's own text of the genre: as the sweep on that genre alone finds it
                assert got["own_fluent"] == r["own_fluent"], (name, r["lang"])
    assert {x["own_fluent"] for r in both.test if r["setting"] == "none" for x in r["genres"].values()} != {1.0}
    for r in both.test:  # each steered row's retention against the model's own text of each genre
        if r["setting"] != "none":
            own = next(x for x in both.test if (x["lang"], x["setting"]) == (r["lang"], "none"))["genres"]
            for g, x in r["genres"].items():
                want = x["fluent"] / own[g]["own_fluent"] if own[g]["own_fluent"] else None
                assert x["own_retention"] == pytest.approx(want) if want is not None else x["own_retention"] is None
    md = (root / "both" / "sweep.md").read_text()
    assert "By genre" in md and "| newsish | chatty |" in md
    assert "By genre and language" in md and "| paper clamp k=1000 | ja |" in md
    assert (root / "both" / "genres.png").stat().st_size > 0 and not (root / "alone-newsish" / "genres.png").exists()


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_cli_sweep_on_genres(setup, capsys):
    root, _, a, b, full = setup
    args = ["sweep", "--neurons", str(root / "n"), "--method", "add", "--languages", "en,de", "--k-fractions", "10%",
            "--alphas", "1", "--layer-sets", "all", "--val-prompts", "1", "--test-prompts", "1", "--test-samples", "1",
            "--max-new-tokens", "4", "--quiet"]
    assert main([*args, "--heldout", f"{a}+{full}", "--genres", "--out", str(root / "n" / "sweep-genres")]) == 0
    data = json.loads((root / "n" / "sweep-genres" / "sweep.json").read_text())
    assert main(["report", str(root / "n")]) == 0  # the report shows the figure by genre
    assert "![by genre](sweep-genres/genres.png)" in (root / "n" / "report.md").read_text()
    assert data["meta"]["prompts"]["left_out"] == {"everything": {l: 12 for l in data["meta"]["prompts"]["val"]}}
    assert main([*args, "--heldout", f"{a}+{a}", "--genres", "--out", str(root / "bad")]) == 2  # named twice
    assert "two genres are named 'newsish'" in capsys.readouterr().err
    assert main([*args, "--heldout", str(a), "--genres", "--out", str(root / "bad")]) == 2  # one corpus: no genres
    assert "--genres needs --heldout with several corpora" in capsys.readouterr().err
    # without --genres, A+B is one corpus mixed in equal shares, as cross-steer reads it: no rows per genre
    assert main([*args, "--heldout", f"{a}+{b}", "--out", str(root / "mixed")]) == 0
    data = json.loads((root / "mixed" / "sweep.json").read_text())
    assert "genre" not in data["meta"]["prompts"] and all("genres" not in r for r in data["test"])


def test_fields_added_later_keep_old_folders_resumable(setup):
    """A config field added after results were written is left out of their settings at the value that
    reproduces the earlier behaviour, so those folders still resume."""
    from tl_langneurons.evaluate.control import result_settings

    tiny_neurons = setup[1]
    plain = result_settings(tiny_neurons, SweepConfig())["config"]
    assert not {"lcb", "lcb_gate", "genres", "after_scales", "band_alphas", "resid_alphas", "keep_norm_stage",
                "spreads", "shared_search", "equal_norms"} & set(plain)
    from_cli = SweepConfig(after_scales=[], band_alphas=[], resid_alphas=[], spreads=[], equal_norms=[])  # as the command line gives
    assert result_settings(tiny_neurons, from_cli)["config"] == plain
    assert result_settings(tiny_neurons, SweepConfig(heldout="a+b", genres=True))["config"]["genres"] is True
    kw = dict(lcb=True, languages=["de"], val_prompts=3, test_prompts=3)
    assert "lcb_gate" not in result_settings(tiny_neurons, SweepConfig(lcb_gate="references", **kw))["config"]
    assert result_settings(tiny_neurons, SweepConfig(**kw))["config"]["lcb_gate"] == "answers"


def test_settings_of_control_folders_made_before_the_later_steering_fields_are_unchanged(setup):
    """An evaluate (or cross-steer) config holds a SteeringConfig: its fields added later are left out at their
    defaults, so a control folder written before them still resumes; set, they count."""
    from tl_langneurons.evaluate.control import EvaluateConfig, result_settings
    from tl_langneurons.steer.methods import SteeringConfig

    neurons = setup[1]
    steering = result_settings(neurons, EvaluateConfig())["config"]["steering"]
    assert set(steering) == {"method", "which", "k", "value", "scale", "positions", "layers", "alpha", "layer",
                             "n_dims", "coef", "restore_norm", "source", "outlier_factor", "steer_tokens"}
    spread = result_settings(neurons, EvaluateConfig(steering=SteeringConfig(spread="even")))["config"]["steering"]
    assert spread["spread"] == "even"
