"""Bad input gets one clear line (exit status 2 from the command line), never a traceback, a silent
wrong result or NaN: damaged corpus files, bad neurons.json, k, max_length, NaN and infinity in the
configs, and damaged cells of the control experiment (recomputed with a warning)."""

import gzip
import json
import math
import shutil
import warnings

import pytest

from tl_langneurons import MultilingualCorpus
from tl_langneurons.cli import main
from tl_langneurons.detect.corpus import CorpusConfig
from tl_langneurons.detect.neurons import FindConfig, LanguageNeurons
from tl_langneurons.detect.ranking import parse_k
from tl_langneurons.errors import LangNeuronsError
from tl_langneurons.evaluate.cells import CellRunner, steered
from tl_langneurons.evaluate.control import EvaluateConfig
from tl_langneurons.evaluate.sweep import SweepConfig
from tl_langneurons.report.build import build_report
from tl_langneurons.steer.generation import GenerationConfig
from tl_langneurons.steer.methods import SteeringConfig

DE = ["Das Wetter ist heute schön.", "Ich lese ein Buch.", "Wir gehen nach Hause.", "Der Hund schläft."]
EN = ["The weather is nice today.", "I am reading a book.", "We are going home.", "The dog is asleep."]


def one_line_error(capsys, code: int, *needles: str) -> str:
    """The command failed with status 2 and printed exactly one error line holding ``needles``."""
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    errors = [line for line in err if line.startswith("tl-langneurons: error:")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert "Traceback" not in "\n".join(err)
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def find(tiny_dirs, tmp_path, *args: str) -> int:
    return main(["find", "--model", str(tiny_dirs["llama"]), "--out", str(tmp_path / "run"), "--quiet", *args])


def folder(tmp_path, name="corpus", **files: bytes):
    d = tmp_path / name
    d.mkdir()
    for fname, data in files.items():
        (d / fname.replace("_", ".")).write_bytes(data)
    return d


def lines(texts) -> bytes:
    return ("\n".join(texts) + "\n").encode()


# ---- corpus files ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["truncated", "not_gzip"])
def test_damaged_gzip_names_the_file(tiny_dirs, tmp_path, capsys, case):
    data = gzip.compress(lines(EN * 50))
    bad = data[: len(data) // 2] if case == "truncated" else lines(EN)  # cut off / plain text named .gz
    d = folder(tmp_path, en_txt_gz=bad, de_txt=lines(DE))
    one_line_error(capsys, find(tiny_dirs, tmp_path, "--corpus", str(d)),
                   f"{d / 'en.txt.gz'} is not a readable gzip file", "compress it again")


def test_bad_utf8_inside_gzip_names_the_file(tiny_dirs, tmp_path, capsys):
    d = folder(tmp_path, en_txt_gz=gzip.compress(lines(EN) + b"caf\xe9\n"), de_txt=lines(DE))
    one_line_error(capsys, find(tiny_dirs, tmp_path, "--corpus", str(d)), f"{d / 'en.txt.gz'}:5: not UTF-8")


def test_bom_is_not_part_of_the_first_text(tmp_path):
    plain = MultilingualCorpus.from_folder(folder(tmp_path, "a", en_txt=lines(EN), de_txt=lines(DE)))
    bom = MultilingualCorpus.from_folder(folder(tmp_path, "b", en_txt=b"\xef\xbb\xbf" + lines(EN),
                                                de_txt_gz=gzip.compress(b"\xef\xbb\xbf" + lines(DE))))
    assert bom.texts == plain.texts and bom.texts["en"][0] == EN[0]
    assert bom.sha256() == plain.sha256()


@pytest.mark.parametrize("row,msg", [
    ({"text": "Hello there.", "lang": ["en"]}, ":2: field 'lang' must be a string such as \"en\", got list [\"en\"]"),
    ({"text": 123, "lang": "en"}, ":2: field 'text' must be a string such as \"Hello.\", got int 123"),
])
def test_jsonl_fields_must_be_strings(tiny_dirs, tmp_path, capsys, row, msg):
    rows = [{"text": t, "lang": "en"} for t in EN[:1]] + [row] + [{"text": t, "lang": l} for l, ts in
                                                                 (("en", EN), ("de", DE)) for t in ts]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    one_line_error(capsys, find(tiny_dirs, tmp_path, "--corpus", str(path)), f"{path}{msg}")


def test_duplicate_texts_warn_and_are_kept(tmp_path):
    d = folder(tmp_path, en_txt=lines(["The same sentence again."] * 20), de_txt=lines(DE + DE[:1]))
    with pytest.warns(UserWarning, match=r"duplicate texts \(en: 19 of 20, de: 1 of 5\).*remove them"):
        c = MultilingualCorpus.from_folder(d)
    assert len(c.texts["en"]) == 20 and len(c.texts["de"]) == 5  # the texts used do not change
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": t, "lang": l}) + "\n" for l, ts in (("en", EN + EN), ("de", DE))
                            for t in ts), encoding="utf-8")
    with pytest.warns(UserWarning, match=r"duplicate texts \(en: 4 of 8\)"):
        assert len(MultilingualCorpus.from_jsonl(path).texts["en"]) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MultilingualCorpus.bundled()  # no duplicates, no warning


@pytest.mark.parametrize("n", ["0", "-3"])
def test_n_per_lang_below_one(tiny_dirs, tmp_path, capsys, n):
    one_line_error(capsys, find(tiny_dirs, tmp_path, "--n-per-lang", n), f"n_per_lang must be at least 1, got {n}",
                   "omit --n-per-lang to use all texts")
    with pytest.raises(LangNeuronsError, match="omit --n-per-lang"):
        CorpusConfig(n_per_lang=int(n))


# ---- FindConfig and k ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", ["1", "0"])
def test_max_length_below_two(tiny_dirs, tmp_path, capsys, n):
    one_line_error(capsys, find(tiny_dirs, tmp_path, "--n-per-lang", "4", "--max-length", n),
                   f"max_length must be at least 2 tokens (BOS and one token of text), got {n}")


def test_find_config_k_type():
    for k in ("abc", True):
        with pytest.raises(LangNeuronsError, match="k must be a count"):
            FindConfig(k=k)
    assert FindConfig(k="0.5%").k == "0.5%"


def test_k_percentage_below_one_neuron(tiny_dirs, tmp_path, capsys):
    one_line_error(capsys, find(tiny_dirs, tmp_path, "--n-per-lang", "4", "--k", "0.0001%"),
                   "k='0.0001%' of 144 neurons is 0.000144 neurons, less than one; use at least 0.348%")
    assert parse_k("0.348%", 144) == 1
    with pytest.raises(LangNeuronsError, match="less than one; use at least 0.348%"):
        parse_k("0.347%", 144)
    for bad in ("nan%", "inf%", "-1%", "0%", "1e400%"):
        with pytest.raises(LangNeuronsError, match="must be a positive number"):
            parse_k(bad, 144)


# ---- a result folder, damaged in several ways ---------------------------------------------------------------
@pytest.fixture(scope="module")
def found(tiny_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_input") / "run"
    assert main(["find", "--model", str(tiny_dirs["llama"]), "--n-per-lang", "8", "--k", "5", "--out", str(out),
                 "--quiet"]) == 0
    return out


def damaged(found, tmp_path, change) -> str:
    d = tmp_path / "run"
    shutil.copytree(found, d)
    info = json.loads((d / "neurons.json").read_text(encoding="utf-8"))
    (d / "neurons.json").write_text(json.dumps(change(info)), encoding="utf-8")
    return str(d)


def steer(d: str, *args: str) -> int:
    return main(["steer", "--neurons", d, "--lang", "de", "--samples", "1", "--max-new-tokens", "2", *args])


def _set(key, value):
    return lambda info: {**info, key: value}


@pytest.mark.parametrize("change,msg", [
    (lambda info: [info], "neurons.json must hold a JSON object, got a JSON list"),
    (_set("format", "2"), "field 'format' is \"2\", this version reads 2"),
    (_set("languages", []), "field 'languages' must be a non-empty list of language codes"),
    (_set("languages", ["en", 3]), "field 'languages' must be a non-empty list of language codes"),
    (_set("k", "ten"), "field 'k' must be an integer of at least 1, got \"ten\""),
    (_set("k", -3), "field 'k' must be an integer of at least 1, got -3"),
    (_set("k", 10**12), "field 'k' is 1000000000000, more than the 144 neurons"),
    (_set("k", 6), "field 'k' is 6 but the en top set holds (5,) neurons"),
    (_set("index", []), "field 'index' must be an object"),
    (_set("meta", "x"), "field 'meta' must be an object"),
    (lambda info: {k: v for k, v in info.items() if k != "k"}, "field 'k' is missing"),
])
def test_neurons_json_schema(found, tmp_path, capsys, change, msg):
    d = damaged(found, tmp_path, change)
    one_line_error(capsys, steer(d), msg, "run find again")


def test_report_checks_neurons_json(found, tmp_path, capsys):
    d = damaged(found, tmp_path, lambda info: [info])
    one_line_error(capsys, main(["report", d]), "must hold a JSON object, got a JSON list")
    with pytest.raises(LangNeuronsError, match="must hold a JSON object"):
        build_report(d)
    d2 = damaged(found, tmp_path / "x", _set("k", "ten"))
    with pytest.raises(LangNeuronsError, match="field 'k' must be an integer"):
        build_report(d2)


def test_check_model_names_the_first_differing_site(found, tmp_path, capsys):
    def swap(info):
        s = info["index"]["slices"]
        s[0]["offset"], s[1]["offset"] = s[1]["offset"], s[0]["offset"]
        return info

    one_line_error(capsys, steer(damaged(found, tmp_path, swap)),
                   "first at blocks.0.mlp.hook_post: 48 neurons at offset 48 there, 48 at offset 0 here",
                   "Use neurons found on this model")


# ---- NaN and infinity -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,msg", [
    (["--scale", "nan"], "--scale must be a finite number"),
    (["--scale", "inf"], "--scale must be a finite number"),
    (["--value", "nan"], "--value must be median, zero or a finite number, got nan"),
    (["--value=-inf"], "--value must be median, zero or a finite number, got -inf"),
    (["--temperature", "inf"], "temperature must be positive and finite"),
])
def test_steer_refuses_nan(found, capsys, args, msg):
    one_line_error(capsys, steer(str(found), *args), msg)


@pytest.mark.parametrize("args,msg", [
    (["--scale", "nan"], "--scale must be a finite number"),
    (["--value", "inf"], "--value must be median, zero or a finite number, got inf"),
    (["--temperature", "nan"], "temperature must be positive and finite"),
])
def test_evaluate_refuses_nan(found, tmp_path, capsys, args, msg):
    code = main(["evaluate", "--neurons", str(found), "--out", str(tmp_path / "c"), "--samples", "1",
                 "--max-new-tokens", "2", "--quiet", *args])
    one_line_error(capsys, code, msg)


@pytest.mark.parametrize("scales", ["0.5,nan", "1,inf", "0", "-1"])
def test_sweep_scales_finite_and_positive(found, tmp_path, capsys, scales):
    code = main(["sweep", "--neurons", str(found), "--out", str(tmp_path / "s"), "--scales", scales, "--quiet"])
    one_line_error(capsys, code, "--scales must be finite numbers above 0", f"got {scales}:")


@pytest.mark.parametrize("args,msg", [
    (["--method", "add", "--equal-norms", "total"], "--equal-norms is a stage of the shared search: give --shared-search"),
    (["--method", "add", "--shared-search", "--equal-norms", "layers"], "--equal-norms must be"),
    (["--method", "clamp", "--shared-search", "--equal-norms", "total"], "--equal-norms is for add (it varies equal_norm), not clamp"),
    (["--test-settings", "x=add:layers=0-99"], "--test-settings x towards en: layer range '0-99'"),
    (["--test-settings", "x=add:alpha=much"], "--test-settings x: alpha must be a number"),
])
def test_sweep_shared_search_options_checked_before_the_model(found, tmp_path, capsys, args, msg):
    code = main(["sweep", "--neurons", str(found), "--out", str(tmp_path / "s"), "--quiet", *args])
    one_line_error(capsys, code, msg)
    assert not (tmp_path / "s").exists()


def test_sweep_test_settings_are_separated_by_semicolons(found, tmp_path, capsys):
    """Each setting holds commas, so --test-settings separates them by ;: two settings, the second's error named."""
    code = main(["sweep", "--neurons", str(found), "--out", str(tmp_path / "s"), "--quiet", "--test-settings",
                 "a=add:k=3,alpha=2,positions=generated; b=add:k=3,equal_norm=quarter"])
    one_line_error(capsys, code, "--test-settings b: --equal-norm must be total or quarters")


def test_steer_equal_norm_checked(found, tmp_path, capsys):
    code = main(["steer", "--neurons", str(found), "--lang", "de", "--method", "diffmean", "--equal-norm", "total",
                 "--quiet"])
    one_line_error(capsys, code, "--equal-norm is for add, not")


def test_api_refuses_nan(found):
    neurons = LanguageNeurons.load(found)
    for kw in ({"value": math.nan}, {"value": math.inf}, {"scale": math.nan}, {"scale": -math.inf}):
        with pytest.raises(LangNeuronsError, match="a finite number"):
            neurons.hooks("de", **kw)
    assert neurons.hooks("de", value=-1.0, scale=2.0)  # finite numbers still work
    for t in (math.inf, math.nan, 0.0):
        with pytest.raises(LangNeuronsError, match="temperature must be positive and finite"):
            GenerationConfig(temperature=t)
    with pytest.raises(LangNeuronsError, match="--scale"):
        SteeringConfig(scale=math.nan)
    with pytest.raises(LangNeuronsError, match="--value"):
        SteeringConfig(value=math.nan)
    with pytest.raises(LangNeuronsError, match="temperature"):
        SweepConfig(temperature=math.inf)


# ---- damaged cells of the control experiment ------------------------------------------------------------------
def _tokens(data):
    data["samples"][0]["tokens"] = "abc"
    return data


def _nll(data):
    data["samples"][1]["nll"] = "low"
    return data


def _seed(data):
    data["samples"][0]["seed"] = "1"
    return data


def _no_samples(data):
    del data["samples"]
    return data


def _edited(data):  # well formed, but not what was written
    data["samples"][0]["text"] += " edited"
    return data


def _cell_run(model, neurons, folder):
    """A function that runs one steered cell (German, k=5, two seeds) in ``folder``: (runner, its rows)."""
    cfg = EvaluateConfig(languages=["de"], samples=2, max_new_tokens=3, ablation_ks=[])

    def run():
        runner = CellRunner(model, neurons, cfg, None, folder, progress=False)
        return runner, runner.samples(steered("de", cfg.steering, "both", 5, [1, 2]))
    return run


@pytest.mark.parametrize("damage,problem", [
    (_tokens, "samples[0].tokens is not a list of integers"),
    (_nll, "samples[1].nll is not a number or null"),
    (_seed, "samples[0].seed is '1', expected 1"),
    (_no_samples, "field 'samples' is missing or not a list"),
    (_edited, "its content does not match its sha256 (edited after it was written)"),
    (lambda data: [data], "a JSON list, not an object"),
    (None, "not readable JSON"),
])
def test_damaged_cell_is_recomputed_with_a_warning(found, tiny_llama, tmp_path, damage, problem):
    run = _cell_run(tiny_llama, LanguageNeurons.load(found), tmp_path / "cells")

    _, rows = run()
    (path,) = (tmp_path / "cells").iterdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner, again = run()  # a sound cell is read back without a warning
    assert again == rows and runner.timings == {}
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) // 2] if damage is None else json.dumps(damage(json.loads(text))), encoding="utf-8")
    with pytest.warns(UserWarning) as caught:
        runner, fixed = run()
    assert [str(w.message) for w in caught] == [f"cell {path} is damaged ({problem}); computing it again"] or (
        damage is None and str(caught[0].message).startswith(f"cell {path} is damaged (not readable JSON: "))
    assert fixed == rows and runner.timings  # computed again, the same samples
    assert json.loads(path.read_text(encoding="utf-8"))["samples"] == rows  # and rewritten


def test_cell_written_before_the_checksum_is_read_as_it_is(found, tiny_llama, tmp_path):
    run = _cell_run(tiny_llama, LanguageNeurons.load(found), tmp_path / "cells")

    _, rows = run()
    (path,) = (tmp_path / "cells").iterdir()
    data = json.loads(path.read_text(encoding="utf-8"))
    del data["sha256"]
    path.write_text(json.dumps(data), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner, again = run()
    assert again == rows and runner.timings == {}  # read back, nothing generated

# ---- nothing lost, nothing silent (issue 26) ------------------------------------------------------------------
@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: every check must come before it."""
    from tl_langneurons.model import load as load_mod

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(load_mod, "_load_hf", no_load)


def snapshot(folder) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_result(folder, kind: str, name: str, text: str = "{}"):
    """A result folder of ``kind`` as the tool marks it (its marker and main file)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".tl-langneurons.json").write_text(json.dumps({"kind": kind, "settings": {}, "files": [name]}))
    (folder / name).write_text(text)
    return folder


SMALL_SWEEP = ["--languages", "de", "--k-fractions", "5%", "--scales", "1", "--positions", "all", "--layer-sets", "all",
               "--val-samples", "1", "--test-samples", "1", "--max-new-tokens", "2", "--quiet"]
SMALL_EVAL = ["--languages", "de", "--samples", "1", "--max-new-tokens", "2", "--ablation-ks", "none", "--quiet"]


@pytest.mark.parametrize("case", ["sweep into the neurons", "evaluate into the neurons", "sweep into a control",
                                  "find into a sweep", "evaluate into a sweep"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_result_of_another_kind_is_never_replaced(found, tiny_dirs, tmp_path, capsys, no_model, case, overwrite):
    n = tmp_path / "n"
    shutil.copytree(found, n)
    fake_result(n / "sweep", "sweep", "sweep.json")
    fake_result(n / "control", "control", "evaluation.json")
    cmd, out = {"sweep into the neurons": (["sweep", "--neurons", str(n), *SMALL_SWEEP], n),
                "evaluate into the neurons": (["evaluate", "--neurons", str(n), *SMALL_EVAL], n),
                "sweep into a control": (["sweep", "--neurons", str(n), *SMALL_SWEEP], n / "control"),
                "find into a sweep": (["find", "--model", str(tiny_dirs["llama"]), "--n-per-lang", "8", "--k", "5",
                                       "--quiet"], n / "sweep"),
                "evaluate into a sweep": (["evaluate", "--neurons", str(n), *SMALL_EVAL], n / "sweep")}[case]
    before = snapshot(n)
    kind = {n: "a find result (neurons)", n / "control": "a control experiment (evaluate)",
            n / "sweep": "a sweep"}[out]
    one_line_error(capsys, main([*cmd, "--out", str(out), *(["--overwrite"] if overwrite else [])]),
                   f"--out {out} holds {kind}, which a", "never replaces (with or without --overwrite)")
    assert snapshot(n) == before


def test_report_and_steer_on_a_sweep_folder_name_the_find_folder(found, tmp_path, capsys):
    n = tmp_path / "n"
    shutil.copytree(found, n)
    fake_result(n / "sweep-add", "sweep", "sweep.json")
    msg = one_line_error(capsys, main(["report", str(n / "sweep-add")]), "holds a sweep, not neurons", f"such as {n}")
    assert "find --out" not in msg  # never suggests writing neurons over the sweep
    one_line_error(capsys, steer(str(n / "sweep-add")), "holds a sweep, not neurons", f"such as {n}")
    with pytest.raises(LangNeuronsError, match="holds a sweep, not neurons; run report on the find folder"):
        build_report(n / "sweep-add")


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_find_again_keeps_what_other_commands_and_the_user_wrote_inside(found, tiny_dirs, tmp_path, capsys):
    n = tmp_path / "n"
    shutil.copytree(found, n)
    (n / "samples").mkdir()
    (n / "samples" / "0123.json").write_text("{}")  # the sample cache
    fake_result(n / "sweep-add-prompts", "sweep", "sweep.json")  # where the README's own example writes
    fake_result(n / "control-small", "control", "evaluation.json")
    fake_result(n / "control", "control", "evaluation.json")
    for name in ("report.md", "report.html", "notes.txt"):
        (n / name).write_text(name)
    (n / "analyses").mkdir()
    (n / "analyses" / "cross_steering.md").write_text("x")
    (n / "mine").mkdir()
    (n / "mine" / "a.txt").write_text("mine")
    (n / ".control-new.partial").mkdir()  # an interrupted evaluate's staging folder (its resume state)
    (n / ".control-new.partial" / "cells").mkdir()
    kept = {k: v for k, v in snapshot(n).items() if "/" in k or k in ("report.md", "report.html", "notes.txt")}
    args = ["find", "--model", str(tiny_dirs["llama"]), "--n-per-lang", "8", "--out", str(n), "--quiet"]
    assert main([*args, "--k", "5"]) == 0  # the same settings
    assert {k: v for k, v in snapshot(n).items() if k in kept} == kept
    capsys.readouterr()
    assert main([*args, "--k", "6", "--overwrite"]) == 0  # other settings: the neurons change, nothing else goes
    assert {k: v for k, v in snapshot(n).items() if k in kept} == kept
    assert json.loads((n / "neurons.json").read_text())["k"] == 6
    assert ("note: " + f"{n} keeps control, control-small, sweep-add-prompts, made on the previous neurons"
            in capsys.readouterr().err)


def test_user_files_in_a_result_survive_a_rerun(found, tmp_path, capsys, caplog):
    ev = tmp_path / "ev2"
    args = ["evaluate", "--neurons", str(found), "--out", str(ev), *SMALL_EVAL]
    assert main(args) == 0
    (ev / "notes.txt").write_text("my notes")
    (ev / "mine").mkdir()
    (ev / "mine" / "a.txt").write_text("mine")
    assert main(args) == 0  # the same settings
    assert main([*args[:-3], "--ablation-ks", "1", "--quiet", "--overwrite"]) == 0  # other settings
    assert (ev / "k_ablation.md").exists()
    with caplog.at_level("WARNING"):
        assert main([*args, "--overwrite"]) == 0  # no ablation: its files go, and are named
    assert "had k_ablation.csv, k_ablation.md, k_ablation.png, which this run does not write" in caplog.text
    assert not (ev / "k_ablation.md").exists()
    assert (ev / "notes.txt").read_text() == "my notes" and (ev / "mine" / "a.txt").read_text() == "mine"
    # a folder that holds only the user's files is no result: refused, untouched
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("x")
    one_line_error(capsys, main([*args[:3], "--out", str(tmp_path / "plain"), *SMALL_EVAL]),
                   "holds files that tl-langneurons did not write")
    assert snapshot(tmp_path / "plain") == {"notes.txt": b"x"}


@pytest.mark.parametrize("argv,msg", [
    (["sweep", "--k-fractions", "abc"], "--k-fractions must be percentages of the neurons above 0% and at most 100% "
                                        "such as 0.5%,1%, got abc: 'abc' is not a percentage such as 0.5%"),
    (["sweep", "--k-fractions", ""], "--k-fractions must be percentages of the neurons above 0% and at most 100% "
                                     "such as 0.5%,1%, got \"\": the list is empty"),
    (["sweep", "--k-fractions=-5%"], "got -5%: -5% is not above 0% and at most 100%"),
    (["sweep", "--k-fractions", "nan%"], "got nan%: nan% is not above 0% and at most 100%"),
    (["sweep", "--k-fractions", "0.5"], "got 0.5: 0.5 has no %: the values are percentages, so write 0.5% for 0.5 "
                                        "percent, or 50% for a share of 0.5"),
    (["sweep", "--k-fractions", "1%,1%"], "got 1%,1%: 1% is repeated"),
    (["sweep", "--k-fractions", "1%,,2%"], "an item is empty"),
    (["sweep", "--k-fractions", "0.05%"], "--k-fractions 0.05%: every value is less than one of the 144 neurons; use "
                                          "at least 0.695% (one neuron)"),
    (["sweep", "--method", "sparse", "--dim-fractions", "nan"], "--dim-fractions must be shares of d_model above 0 "
                                                                "and at most 1 such as 0.01,0.05, got nan: nan is not "
                                                                "a finite number"),
    (["sweep", "--method", "sparse", "--dim-fractions=-0.5"], "got -0.5: -0.5 is not above 0"),
    (["sweep", "--method", "sparse", "--dim-fractions", "50"], "got 50: 50 is above 1"),
    (["sweep", "--method", "sparse", "--dim-fractions", ""], "--dim-fractions must be shares of d_model"),
    (["sweep", "--method", "sparse", "--coefs", ""], "--coefs must be finite numbers above 0"),
    (["sweep", "--method", "add", "--alphas", ""], "--alphas must be finite numbers above 0 such as 0.5,1,2, got \"\": "
                                                   "the list is empty"),
    (["sweep", "--method", "add", "--alphas", "1,inf"], "got 1,inf: inf is not a finite number"),
    (["sweep", "--layer-sets", ""], "--layer-sets must be layer subsets"),
    (["sweep", "--scales", "x"], "--scales must be finite numbers above 0 such as 0.5,1,2, got x: 'x' is not a number"),
    (["sweep", "--method", "diffmean", "--resid-layers", "7"], "--resid-layers 7: there is no layer 7; the residual "
                                                               "means were recorded for 3 layers (0-2)"),
    (["sweep", "--method", "diffmean", "--resid-layers", "1.5"], "--resid-layers must be layer numbers such as 4,6 "
                                                                 "(none: the default), got 1.5: '1.5' is not a whole "
                                                                 "number"),
    (["sweep", "--steer-tokens", "0"], "--steer-tokens must be whole numbers of at least 1"),
    (["sweep", "--positions", "all,all"], "--positions must be some of all,last,generated, got all,all: all is "
                                          "repeated"),
    (["sweep", "--languages", "de,de"], "--languages must be comma-separated language codes such as de,ja (none: "
                                        "all), got de,de: de is repeated"),
    (["sweep", "--languages", "de,xx"], "no neurons for language 'xx'"),
    (["evaluate", "--languages", "de,de"], "got de,de: de is repeated"),
    (["evaluate", "--languages", "xx"], "no neurons for language 'xx'"),
    (["evaluate", "--ablation-ks=-5"], "--ablation-ks must be counts such as 10,100 or percentages such as 0.5% "
                                       "(none: no ablation), got -5: -5 is below 1"),
    (["evaluate", "--ablation-ks", "5,5"], "got 5,5: 5 is repeated"),
    (["evaluate", "--ablation-ks", "abc"], "got abc: 'abc' is not a whole number"),
    (["find", "--languages", "de,de"], "got de,de: de is repeated"),
])
def test_list_options_are_checked_by_one_helper_before_the_model_loads(found, tiny_dirs, tmp_path, capsys, no_model,
                                                                       argv, msg):
    sub, *rest = argv
    where = (["--model", str(tiny_dirs["llama"]), "--out", str(tmp_path / "o")] if sub == "find" else
             ["--neurons", str(found), "--out", str(tmp_path / "o")])
    one_line_error(capsys, main([sub, *where, *rest, "--quiet"]), msg)
    assert not (tmp_path / "o").exists()


def test_list_options_in_the_api():
    with pytest.raises(LangNeuronsError, match="--k-fractions .* got 0.5: 0.5 has no %"):
        SweepConfig(k_fractions=["0.5"])
    with pytest.raises(LangNeuronsError, match="--alphas .* the list is empty"):
        SweepConfig(alphas=[])
    from tl_langneurons.cli import build_parser
    from tl_langneurons.config import from_args

    args = build_parser().parse_args(["sweep", "--neurons", "N", "--k-fractions", "1%, 2%", "--resid-layers", "none",
                                      "--steer-tokens", "none", "--languages", "none", "--alphas", "1,2"])
    cfg = from_args(SweepConfig, args)  # the words none: the default (resid layers, languages) or no stage
    assert (cfg.k_fractions, cfg.resid_layers, cfg.steer_tokens, cfg.languages) == (["1%", "2%"], None, [], None)
    assert cfg.alphas == [1.0, 2.0] and all(type(a) is float for a in cfg.alphas)
    assert EvaluateConfig(ablation_ks=[10, "0.5%", 3]).ablation_ks == [10, "0.5%", 3]
    with pytest.raises(LangNeuronsError, match="--languages .* de is repeated"):
        CorpusConfig(languages=["de", "de"])


def _sweep_json(found, best, **meta) -> dict:
    import hashlib

    ap_sha = hashlib.sha256(LanguageNeurons.load(found).ap.numpy().tobytes()).hexdigest()[:16]
    return {"best": best, "stages": [], "test": [], "meta": {"ap_sha": ap_sha, **meta}}


@pytest.mark.parametrize("data,pick,msg", [
    (lambda d: {**d, "best": [d["best"]["de"]]}, "best", "field 'best' must be an object, got [{"),
    (lambda d: {**d, "best": {"de": "add k=5"}}, "best", "field 'best.de' must be an object, got \"add k=5\""),
    (lambda d: {**d, "best": {"de": {**d["best"]["de"], "k": "x"}}}, "best",
     "field 'best.de.k' must be a whole number or null, got \"x\""),
    (lambda d: {**d, "best": {"de": {**d["best"]["de"], "alpha": "big"}}}, "best",
     "field 'best.de.alpha' must be a number, got \"big\""),
    (lambda d: {**d, "best": {"de": {**d["best"]["de"], "method": "push"}}}, "best",
     "field 'best.de' is not a setting this version can use (unknown intervention 'push'"),
    (lambda d: {**d, "meta": {**d["meta"], "shared": {"method": "add", "k": "x"}}}, "shared",
     "field 'meta.shared.k' must be a whole number or null, got \"x\""),
    (lambda d: {**d, "meta": [1]}, "best", "field 'meta' must be an object or null, got [1]"),
    (lambda d: [d], "best", "must hold a JSON object, got a JSON list"),
])
def test_from_sweep_names_the_damaged_field(found, tmp_path, capsys, no_model, data, pick, msg):
    good = _sweep_json(found, {"de": {"method": "add", "k": 5, "alpha": 1.0, "positions": "all", "layers": None,
                                      "val": {"gated_rate": 0.5}}}, shared=None)
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "sweep.json").write_text(json.dumps(data(good)))
    one_line_error(capsys, steer(str(found), "--from-sweep", str(tmp_path / "sw"), "--sweep-pick", pick),
                   f"{tmp_path / 'sw' / 'sweep.json'}", msg, "run the sweep again")


@pytest.mark.parametrize("folder,name,text,msg", [
    ("control", "evaluation.json", "{not json", "evaluation.json is not readable JSON (JSONDecodeError"),
    ("control", "evaluation.json", "[]", "evaluation.json must hold a JSON object, got a JSON list"),
    ("control", "evaluation.json", json.dumps({"meta": {"config": {"samples": "x"}}}),
     "field 'meta.config.samples' must be a whole number or null, got \"x\""),
    ("control", "evaluation.json", json.dumps({"meta": {"config": {}, "seeds": 3}}),
     "field 'meta.seeds' must be a string or null, got 3"),
    ("sweep", "sweep.json", "{not json", "sweep.json is not readable JSON"),
    ("sweep", "sweep.json", json.dumps({"meta": {"config": {}}, "stages": "x"}), "field 'stages' must be a list"),
    ("sweep", "sweep.json", json.dumps({"meta": {"config": {}}, "stages": [{"lang": "de", "label": "a", "rate": "x"}]}),
     "field 'stages[0].rate' must be a number, got \"x\""),
    ("sweep-add", "sweep.json", json.dumps({"meta": [], "stages": []}), "field 'meta' must be an object, got []"),
])
def test_report_names_the_damaged_field(found, tmp_path, capsys, folder, name, text, msg):
    n = tmp_path / "n"
    shutil.copytree(found, n)
    fake_result(n / folder, "control" if folder == "control" else "sweep", name, text)
    (n / folder / ("table2.md" if folder == "control" else "sweep.md")).write_text("| a |\n")
    one_line_error(capsys, main(["report", str(n)]), f"{n / folder / name}", msg, "--overwrite), or move it away")
    assert not (n / "report.md").exists()


@pytest.fixture(scope="module")
def bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_steering.py"
    spec = importlib.util.spec_from_file_location("bench_steering_bad_input", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("args,msg", [
    (["--setting", "a=add:layers=0-9"], "--setting a towards en: layer range '0-9' must be A-B with A <= B <= 2"),
    (["--setting", "a=add:k=99999"], "--setting a towards en: k=99999 is larger than the number of neurons (144)"),
    (["--setting", "a=diffmean:layer=9"], "--setting a: --layer must be between 0 and 2"),
    (["--samples", "0"], "--samples must be at least 1, got 0"),
    (["--prompt-tokens", "0"], "--prompt-tokens must be at least 1, got 0"),
    ("empty", "holds no neurons"),
])
def test_bench_steering_bad_settings_are_one_line_before_the_model_loads(bench, found, tmp_path, capsys, no_model,
                                                                         args, msg):
    neurons = str(found)
    if args == "empty":
        (tmp_path / "empty").mkdir()
        neurons, args = str(tmp_path / "empty"), []
    with pytest.raises(SystemExit) as e:
        bench.main(["--neurons", neurons, *args, "--no-record", "--quiet", "--out", str(tmp_path / "st")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("bench_steering: error: ") and msg in err[0], err
    assert not (tmp_path / "st").exists()


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_out_is_written_through_a_link_and_a_dangling_link_is_refused(tiny_dirs, tmp_path, capsys):
    args = ["find", "--model", str(tiny_dirs["llama"]), "--n-per-lang", "8", "--k", "5", "--quiet", "--out"]
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert main([*args, str(tmp_path / "link")]) == 0
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "neurons.json").exists()
    (tmp_path / "real" / "notes.txt").write_text("mine")
    assert main([*args, str(tmp_path / "link"), "--k", "6", "--overwrite"]) == 0  # and again, through the link
    assert (tmp_path / "link").is_symlink() and json.loads((tmp_path / "real" / "neurons.json").read_text())["k"] == 6
    assert (tmp_path / "real" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no .link.old, .real.partial, ...
    # a dangling link: refused before the run, nothing written
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    one_line_error(capsys, main([*args, str(tmp_path / "dangling")]),
                   f"--out {tmp_path / 'dangling'} is a symbolic link to {tmp_path / 'nowhere'}, which does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "link", "real"]
    # the state an earlier version left (the link moved aside as .NAME.old, a real folder in its place) heals
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "a.txt").write_text("a")
    shutil.copytree(tmp_path / "real", tmp_path / "moved")
    (tmp_path / ".moved.old").symlink_to(tmp_path / "kept")
    assert main([*args, str(tmp_path / "moved"), "--k", "6"]) == 0
    assert not (tmp_path / ".moved.old").is_symlink() and (tmp_path / "kept" / "a.txt").read_text() == "a"


@pytest.fixture(scope="module")
def lape(tiny_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("lape") / "run"
    assert main(["find", "--model", str(tiny_dirs["llama"]), "--n-per-lang", "8", "--k", "5", "--method", "lape",
                 "--out", str(out), "--quiet"]) == 0
    neurons = LanguageNeurons.load(out)
    sizes = {lang: len(neurons.sets[lang]["top"].neurons) for lang in neurons.languages}
    empty = next(lang for lang, n in sizes.items() if n == 0)
    some = next(lang for lang, n in sizes.items() if 0 < n < 5)
    return out, empty, some, sizes[some]


def test_steer_refuses_an_empty_neuron_set_and_labels_a_small_one(lape, capsys, no_model):
    out, empty, some, n_some = lape
    steer_args = ["steer", "--neurons", str(out), "--samples", "1", "--max-new-tokens", "2"]
    one_line_error(capsys, main([*steer_args, "--lang", empty]),
                   f"lape selected no both neurons for {empty!r}, so nothing would be steered")
    one_line_error(capsys, main([*steer_args, "--lang", some, "--which", "bottom"]),
                   "--which bottom: lape selects top neurons only (its bottom sets are empty)")
    from tl_langneurons.steer.pairs import SteerPairsConfig, steer_label

    label = steer_label(LanguageNeurons.load(out), SteerPairsConfig(lang=some))
    assert label == f"clamp both-5 neurons ({n_some} neuron{'s' if n_some > 1 else ''}: lape chose fewer)"


def test_sweep_never_scores_a_setting_that_steers_no_neuron(lape, tmp_path, capsys):
    out, empty, some, n_some = lape
    args = ["sweep", "--neurons", str(out), "--method", "add", "--k-fractions", "5%", "--alphas", "1",
            "--layer-sets", "all,first,last", "--val-samples", "1", "--test-samples", "1", "--max-new-tokens", "2",
            "--quiet"]
    one_line_error(capsys, main([*args, "--languages", f"{some},{empty}", "--out", str(tmp_path / "a")]),
                   f"lape selected no top neurons for {empty!r}")
    assert main([*args, "--languages", some, "--out", str(tmp_path / "s")]) == 0
    res = json.loads((tmp_path / "s" / "sweep.json").read_text())
    neurons = LanguageNeurons.load(out)
    layers = neurons.index.layers()[neurons.sets[some]["top"].neurons.numpy()]
    for row in res["stages"]:  # every setting scored steers a neuron, and its label says how many
        assert f"({n_some} neuron" in row["label"], row["label"]
        assert row.get("layers") in (None, "first", "last")
    noop = [x for x in ("first", "last") if not ((layers < 1) if x == "first" else (layers > 1)).any()]
    assert noop and not any(row.get("layers") in noop for row in res["stages"])
    assert "not scored, as they steer no neuron (lape chose none)" in (tmp_path / "s" / "sweep.md").read_text()


def test_find_with_an_existing_cache_records_the_residual_means(tiny_llama, tiny_corpus, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from tl_langneurons.detect.neurons import find_neurons

    cache = tmp_path / "c.safetensors"
    first = find_neurons(tiny_llama, tiny_corpus, FindConfig(k=5, method="meandiff"), cache=cache, progress=False)
    again = find_neurons(tiny_llama, tiny_corpus, FindConfig(k=5, method="meandiff"), cache=cache, progress=False)
    assert again.resid_means is not None and again.resid_norms is not None
    assert (again.resid_means == first.resid_means).all() and (again.ap == first.ap).all()
    # a cache written before it kept the residual means: refused with the fix, not a result without them
    with safe_open(str(cache), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys() if not k.startswith("resid.")}
    save_file(tensors, str(cache), metadata=meta)
    with pytest.raises(LangNeuronsError, match="holds no residual-stream means .* delete it and the run collects again"):
        find_neurons(tiny_llama, tiny_corpus, FindConfig(k=5, method="meandiff"), cache=cache, progress=False)


def test_val_prompts_beyond_the_held_out_text_are_refused(found, tmp_path, capsys, no_model):
    one_line_error(capsys, main(["sweep", "--neurons", str(found), "--heldout", "bundled", "--val-prompts", "100000",
                                 "--out", str(tmp_path / "s"), "--quiet"]),
                   "--test-prompts 20 and --val-prompts 100000 need 100020 held-out en texts, each its own prompt; "
                   "bundled has 320: ask for fewer prompts")


@pytest.mark.parametrize("command", ["steer", "cross-steer"])
def test_sweep_pick_needs_from_sweep(found, capsys, no_model, command):
    argv = (["steer", "--neurons", str(found), "--lang", "de"] if command == "steer" else
            ["cross-steer", "--neurons", str(found), "--heldout", "bundled"])
    one_line_error(capsys, main([*argv, "--sweep-pick", "shared", "--quiet"]),
                   "--sweep-pick shared picks among a sweep's settings; give the sweep with --from-sweep DIR")


def test_held_out_text_that_find_used_is_named(found, tiny_llama, tmp_path, caplog):
    from tl_langneurons.analyses.deactivation import DeactivationConfig
    from tl_langneurons.study import Study

    study = Study(shutil.copytree(found, tmp_path / "n"), tiny_llama, progress=False)
    with caplog.at_level("WARNING"):
        study.deactivate("bundled", DeactivationConfig(n_texts=1))  # the find corpus is 8 texts of it
    warned = [r.getMessage() for r in caplog.records if "held-out" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("warning: 48 of the 1920 held-out texts of en, de, fr, es, zh, ja "
                                                     "(en 8, de 8, fr 8, es 8, zh 8, ja 8) are texts find selected "
                                                     "these neurons on (corpus bundled): results on them are not held "
                                                     "out"), warned
    caplog.clear()
    used = study.references()  # the texts find selected the neurons on
    held = tmp_path / "held"
    held.mkdir()
    for lang, texts in MultilingualCorpus.bundled().texts.items():  # held-out text apart from them
        (held / f"{lang}.txt").write_bytes(lines([t for t in texts if t not in used[lang]][:20]))
    with caplog.at_level("WARNING"):
        study.deactivate(str(held), DeactivationConfig(n_texts=1))
    assert not [r for r in caplog.records if "held-out" in r.getMessage()]


def test_dtype_mismatch_is_named(found, capsys, no_model):
    one_line_error(capsys, steer(str(found), "--dtype", "bfloat16"),
                   "--dtype bfloat16: these neurons were found in float32, and steering them on bfloat16 weights is a "
                   "dtype mismatch; leave --dtype out")
    one_line_error(capsys, main(["sweep", "--neurons", str(found), "--dtype", "bfloat16", "--quiet"]), "dtype mismatch")


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_offload_folders_of_killed_runs_are_removed_by_the_next(tiny_dirs, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys

    from tl_langneurons.model.load import _offload_prefix, load_model
    from warm import run_cli

    cache = tmp_path / "cache"
    env = {**os.environ, "TL_LANGNEURONS_CACHE": str(cache), "TL_LANGNEURONS_FAULT": "collect", "HF_HUB_OFFLINE": "1"}
    r = run_cli(["find", "--model", str(tiny_dirs["llama"]), "--n-per-lang", "4", "--k", "5", "--out", str(tmp_path / "o"),
                 "--device-map", "auto", "--max-memory", "cpu=1KiB", "--quiet"], env)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    (stale,) = cache.glob(".offload-*")  # the killed run's, named by its host and process id
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = cache / f"{_offload_prefix()}{alive.pid}-x"  # another process's, still running
        running.mkdir()
        monkeypatch.setenv("TL_LANGNEURONS_CACHE", str(cache))
        load_model(str(tiny_dirs["llama"]), device_map="auto", max_memory="cpu=1KiB")
        assert not stale.exists() and running.exists()
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.parametrize("args,msg", [
    (["--lcb", "--lcb-set", "crosslingual/nope"], "LCB set 'crosslingual/nope': neither a shipped set"),
    (["--lcb-set", "crosslingual/sharegpt"], "--lcb-set names the LCB test set of an --lcb sweep: give --lcb too"),
    (["--lcb", "--val-prompts", "4"], "LCB's prompts come in requests of 3 phrasings"),
    (["--lcb", "--lcb-set", "crosslingual/sharegpt", "--val-prompts", "1", "--languages", "de"],
     "--val-prompts 1: whole de requests of LCB's crosslingual/sharegpt (46 requests of 2 or 3 phrasings"),
    (["--lcb", "--lcb-set", "monolingual/native", "--languages", "de"],
     "LCB's monolingual/native asks for es, fr, ja, ko; not de"),
    (["--lcb", "--lcb-set", "monolingual/okapi", "--method", "add", "--sources", "none,prompt"],
     "--sources prompt steers away from the request's language; monolingual/okapi's requests are written in"),
    (["--lcb", "--languages", "ko"], "ko"),  # a language of LCB's, not of the neurons
])
def test_sweep_lcb_set_checked_before_the_model(found, tmp_path, capsys, monkeypatch, args, msg):
    from tl_langneurons.model.load import ModelConfig

    monkeypatch.setattr(ModelConfig, "load", lambda *a, **k: pytest.fail("the model loaded"))
    code = main(["sweep", "--neurons", str(found), "--out", str(tmp_path / "s"), "--quiet", *args])
    one_line_error(capsys, code, msg)
    assert not (tmp_path / "s").exists()


def test_find_sae_without_sae_lens_is_one_line_before_the_model(tmp_path, capsys, monkeypatch):
    """find --sae where SAELens cannot attach SAEs (sae-lens absent, or transformer-lens 4.x): one line naming the
    install, before the model loads. In the transformer-lens 3.x + sae-lens environment the missing package is
    simulated."""
    import importlib.util

    from tl_langneurons.model.load import ModelConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sae_lens" else real(name, *a))
    monkeypatch.setattr(ModelConfig, "load", lambda *a, **k: pytest.fail("the model loaded"))
    code = main(["find", "--corpus", "bundled", "--n-per-lang", "2", "--sae", str(tmp_path / "sae"), "--out",
                 str(tmp_path / "out"), "--quiet"])
    one_line_error(capsys, code, "--sae needs sae-lens, which is not installed", 'transformer-lens>=3.9,<4')
    assert not (tmp_path / "out").exists()
