"""benchmarks/bench_steering.py on a tiny find folder: its BOS numbers are the control experiment's on
the same seeds, its prompted numbers are cross_steering's, and a bad --setting is one line and exit 2."""

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tl_langneurons import MultilingualCorpus
from tl_langneurons.analyses.cross_steering import CrossSteerConfig
from tl_langneurons.cli import main
from tl_langneurons.evaluate.control import EvaluateConfig
from tl_langneurons.steer.methods import SteeringConfig
from tl_langneurons.study import Study

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_steering.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_steering", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_steering_equals_the_experiments(bench, tiny_dirs, tmp_path):
    out = tmp_path / "run"
    assert main(["find", "--model", str(tiny_dirs["llama"]), "--n-per-lang", "8", "--k", "5", "--out", str(out),
                 "--quiet"]) == 0
    held = tmp_path / "held"
    held.mkdir()
    for lang, texts in MultilingualCorpus.bundled().sample(4, seed=9).texts.items():
        (held / f"{lang}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    # a sweep's per-language best: diffmean towards de, add towards the others
    langs = json.loads((out / "neurons.json").read_text())["languages"]
    best = {l: {"method": "add", "alpha": 3.0, "source": "prompt", "k": 5, "layers": None, "positions": "all",
                "val": {"gated_rate": 0.5}} for l in langs}
    best["de"] = {"method": "diffmean", "layer": 1, "alpha": 0.5, "k": 5}
    (tmp_path / "sw").mkdir()
    ap_sha = hashlib.sha256(Study(out, progress=False).neurons.ap.numpy().tobytes()).hexdigest()[:16]
    (tmp_path / "sw" / "sweep.json").write_text(json.dumps({"best": best, "meta": {"ap_sha": ap_sha}}))
    bench.main(["--neurons", str(out), "--setting", "paper clamp=clamp", "--setting", "dm=diffmean:layer=1,alpha=0.5",
                "--setting", "src=add:alpha=3,source=prompt", "--sweep-best", f"sw={tmp_path / 'sw'}",
                "--samples", "3", "--max-new-tokens", "4", "--heldout", str(held), "--n-prompts", "1",
                "--prompt-samples", "2", "--prompt-tokens", "3", "--prompted-only", "dm,src,sw", "--no-record", "--quiet",
                "--out", str(tmp_path / "st")])
    res = json.loads((tmp_path / "st" / "steering.json").read_text())
    assert set(res["bos"]) == {"none", "paper clamp", "dm", "src", "sw"} and list(res["prompted"]) == ["dm", "src", "sw"]
    # each target gets its own setting: de's cells are dm's, the others src's (BOS and the prompted matrix)
    de = langs.index("de")
    for lang in langs:
        assert res["bos"]["sw"][lang] == res["bos"]["dm" if lang == "de" else "src"][lang]
    for m in ("rate", "fluent", "nll"):
        sw, dm, src = (np.array(res["prompted"][n][m], dtype=float) for n in ("sw", "dm", "src"))
        assert np.allclose(sw[:, de], dm[:, de], equal_nan=True)
        assert np.allclose(np.delete(sw, de, axis=1), np.delete(src, de, axis=1), equal_nan=True)
    assert "sw, towards each language: en add k=5 a=3 src=prompt; de diffmean L1 a=0.5" in \
        (tmp_path / "st" / "steering.md").read_text()
    # the paper clamp's BOS cells are Table 2's "both" cells on the same seeds (and read from the same cache)
    study = Study(out, progress=False)
    ctl = study.evaluate(EvaluateConfig(samples=3, max_new_tokens=4, ablation_ks=[]), out=tmp_path / "ctl")
    cache = ctl.meta["run"]["sample_cache"]
    assert (cache["hits"], cache["misses"]) == (3 + 6 * 3, 6 * 2 * 3)  # only top and bottom are new
    for row in ctl.table2:
        got = res["bos"]["none" if row["condition"] == "none" else "paper clamp"][row["lang"] or "en"]
        if row["condition"] in ("none", "both"):
            assert got["rate"] == row["rate"] and got["gated_rate"] == row["gated_rate"]
            assert got["nll"] == pytest.approx(row["nll"], abs=1e-9)
    cross = study.cross_steer(str(held), CrossSteerConfig(n_prompts=1, samples=2, max_new_tokens=3,
                                                          steering=SteeringConfig(method="diffmean", layer=1, alpha=0.5)))
    assert res["prompted"]["dm"]["rate"] == cross.rate.tolist()
    assert np.allclose(res["prompted"]["dm"]["nll"], cross.nll, atol=1e-9)
    # source=prompt: each prompt's language deactivated in the matrix; from BOS (no prompt) no source
    cross = study.cross_steer(str(held), CrossSteerConfig(n_prompts=1, samples=2, max_new_tokens=3,
                                                          steering=SteeringConfig(method="add", alpha=3, source="prompt")))
    assert np.allclose(res["prompted"]["src"]["nll"], cross.nll, atol=1e-9, equal_nan=True)
    md = (tmp_path / "st" / "steering.md").read_text()
    assert "From real prompts" in md and "From BOS without a source (there is no prompt language): src, sw." in md
    # written into the neurons folder (the default --out), the comparison is a section of the report
    bench.main(["--neurons", str(out), "--setting", "dm=diffmean:layer=1,alpha=0.5", "--setting", "plain=add:alpha=3",
                "--samples", "3", "--max-new-tokens", "4", "--no-record", "--quiet"])
    assert json.loads((out / "steering" / "steering.json").read_text())["bos"]["plain"] == res["bos"]["src"]
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "## Steering interventions compared" in report and "diffmean L1 a=0.5" in report


def test_bench_steering_bad_setting(bench, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench.main(["--neurons", str(tmp_path), "--sweep-best", f"x={tmp_path / 'nosweep'}", "--no-record"])
    assert e.value.code == 2 and "is not a finished sweep's result" in capsys.readouterr().err
    for spec in ("nomethod", "x=add:alpha=big", "x=add:speed=2", "x=add:steer_tokens=2.5"):
        with pytest.raises(SystemExit) as e:
            bench.main(["--neurons", str(tmp_path), "--setting", spec, "--no-record"])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--setting" in err[0]
    # whole-number options are ints, so a setting keys its samples as the sweep's does (16, not 16.0)
    assert bench.parse_setting("x=add:steer_tokens=16.0,k=5")[1].key()["steer_tokens"] == 16


def test_setting_takes_the_later_fields(bench):
    """--setting parses the fields added for issue 29 into what SteeringConfig wants (words, bools, numbers)."""
    name, st = bench.parse_setting("banded=add:k=9,band_alphas=last:0.5+0-1:2,spread=even,resid_alpha=0.05,"
                                   "layer=1,keep_norm=true,steer_tokens=16,after_scale=0.25")
    assert name == "banded" and (st.band_alphas, st.spread, st.keep_norm, st.resid_alpha) == (
        "last:0.5+0-1:2", "even", True, 0.05)
    assert (st.steer_tokens, st.after_scale, st.layer, st.k) == (16, 0.25, 1, 9)
