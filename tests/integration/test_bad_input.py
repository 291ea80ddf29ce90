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
from tl_langneurons.evaluate.control import CellRunner, EvaluateConfig
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
    one_line_error(capsys, code, "--scales must be finite numbers above 0", f"got {scales}".replace("1,inf", "1.0,inf"))


def test_api_refuses_nan(found):
    neurons = LanguageNeurons.load(found)
    for kw in ({"value": math.nan}, {"value": math.inf}, {"scale": math.nan}, {"scale": -math.inf}):
        with pytest.raises(LangNeuronsError, match="must be a finite number"):
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


@pytest.mark.parametrize("damage,problem", [
    (_tokens, "samples[0].tokens is not a list of integers"),
    (_nll, "samples[1].nll is not a number or null"),
    (_seed, "samples[0].seed is '1', expected 1"),
    (_no_samples, "field 'samples' is missing or not a list"),
    (lambda data: [data], "a JSON list, not an object"),
    (None, "not readable JSON"),
])
def test_damaged_cell_is_recomputed_with_a_warning(found, tiny_llama, tmp_path, damage, problem):
    neurons = LanguageNeurons.load(found)
    cfg = EvaluateConfig(languages=["de"], samples=2, max_new_tokens=3, ablation_ks=[])

    def run():
        runner = CellRunner(tiny_llama, neurons, cfg, None, tmp_path / "cells", progress=False)
        return runner, runner.samples("de", "both", 5, [1, 2])

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
