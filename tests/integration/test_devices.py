"""Device, dtype and device map: the options are checked before anything loads (one line, exit 2);
bf16 collection still pools in float32 and records what made the result; a model split by an
accelerate device map (CPU + disk offload) gives the pooled values, neurons, clamped logits and
samples of the unsplit model."""

import json

import pytest
import torch

from tl_langneurons import (
    FindConfig,
    GenerationConfig,
    LangNeuronsError,
    ModelConfig,
    Study,
    collect,
    find_neurons,
    generate,
    load_model,
)
from tl_langneurons.cli import _COMMANDS, build_parser, main
from tl_langneurons.model import load as load_mod
from tl_langneurons.model.driver import Runner
from tl_langneurons.model.load import parse_max_memory, resolve_device, runtime_info, weights_fingerprint

MODEL_OPTIONS = ("--device", "--dtype", "--device-map", "--max-memory")
# three blocks of the tiny Llama: embedding and block 0 in memory, blocks 1-2 offloaded to disk
SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
         "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}


def one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    errors = [line for line in err if line.startswith("tl-langneurons: error:")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


# ---- options and their checks (no model) -----------------------------------------------------------------------
def test_every_model_command_has_device_options():
    parser = build_parser()
    subs = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices
    model_commands = [name for name, *_ in _COMMANDS]
    assert {"info", "find", "steer", "evaluate", "sweep", "deactivate", "attribution", "tokens",
            "cross-steer"} <= set(model_commands)
    for name in model_commands:
        flags = {s for a in subs[name]._actions for s in a.option_strings}
        assert set(MODEL_OPTIONS) <= flags, (name, set(MODEL_OPTIONS) - flags)
    args = parser.parse_args(["evaluate", "--neurons", "N", "--device", "cpu", "--dtype", "bfloat16"])
    assert (args.device, args.dtype, args.device_map, args.max_memory) == ("cpu", "bfloat16", None, None)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["find", "--out", "O", "--dtype", "float64"])
    assert e.value.code == 2


def test_device_strings():
    want = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto") == want
    assert resolve_device("cpu") == "cpu" and resolve_device(None) == "cpu"
    for bad in ("gpu", "cuda:x", "cuda:", "tpu", ""):
        with pytest.raises(LangNeuronsError, match="unknown device"):
            ModelConfig(device=bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_but_absent():
    with pytest.raises(LangNeuronsError, match="CUDA is not available here"):
        ModelConfig(device="cuda")
    with pytest.raises(LangNeuronsError, match="CUDA is not available here"):
        load_model("unused-because-the-check-comes-first", device="cuda:0")


def test_cuda_index_beyond_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("auto") == "cuda"
    with pytest.raises(LangNeuronsError, match="has 2 GPU"):
        resolve_device("cuda:2")


def test_max_memory_and_device_map_checks():
    assert parse_max_memory("0=10GiB, 1=12GB,cpu=30GiB") == {0: "10GiB", 1: "12GB", "cpu": "30GiB"}
    assert parse_max_memory("disk=1TB,mps=500MiB") == {"disk": "1TB", "mps": "500MiB"}
    for bad, msg in [("0:10GiB", "not DEVICE=SIZE"), ("0=lots", "not DEVICE=SIZE"), ("gpu0=1GB", "not a GPU index"),
                     (",", "empty")]:
        with pytest.raises(LangNeuronsError, match=msg):
            ModelConfig(device_map="auto", max_memory=bad)
    with pytest.raises(LangNeuronsError, match="needs --device-map auto"):
        ModelConfig(max_memory="cpu=1GB")
    with pytest.raises(LangNeuronsError, match="either --device cpu or --device-map auto"):
        ModelConfig(device="cpu", device_map="auto")
    with pytest.raises(LangNeuronsError, match="unknown device map"):
        ModelConfig(device_map="everywhere")
    with pytest.raises(LangNeuronsError, match="unknown dtype"):
        ModelConfig(dtype="float64")
    with pytest.raises(LangNeuronsError, match="needs a device_map"):
        load_model("unused", max_memory="cpu=1GB")


@pytest.mark.parametrize("args, msg", [
    (["--device", "quantum"], "unknown device 'quantum'"),
    (["--max-memory", "cpu=1GB"], "needs --device-map auto"),
    (["--device-map", "auto", "--max-memory", "cpu"], "not DEVICE=SIZE"),
    (["--device", "cpu", "--device-map", "auto"], "not both"),
])
@pytest.mark.parametrize("command", ["find", "evaluate", "steer", "info"])
def test_bad_device_options_fail_before_anything_loads(tmp_path, capsys, monkeypatch, command, args, msg):
    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(load_mod, "_load_hf", no_load)
    missing = str(tmp_path / "no-such-thing")  # neither the model nor the neurons exist: the options fail first
    argv = {"find": ["find", "--model", missing, "--out", str(tmp_path / "o")],
            "info": ["info", "--model", missing],
            "evaluate": ["evaluate", "--neurons", missing],
            "steer": ["steer", "--neurons", missing, "--lang", "de"]}[command]
    one_line_error(capsys, main([*argv, *args, "--quiet"] if command != "info" else [*argv, *args]), msg)


# ---- bf16 -------------------------------------------------------------------------------------------------------
def test_bf16_collection_pools_in_float32(tiny_dirs, tiny_llama, tiny_corpus):
    texts = tiny_corpus.flat()[0][::6][:10]
    bf = load_model(str(tiny_dirs["llama"]), dtype="bfloat16")
    assert runtime_info(bf) == {"device": "cpu", "dtype": "bfloat16", "device_map": None}
    got = collect(bf, texts, "mlp_post", "mean", progress=False)
    ref = collect(tiny_llama, texts, "mlp_post", "mean", progress=False)
    assert got.values.dtype == torch.float32 and torch.isfinite(got.values).all()
    # means of bf16 activations, summed in float32: not bf16-rounded themselves, and near the float32 run
    assert not torch.equal(got.values, got.values.bfloat16().float())
    err = (got.values - ref.values).abs().max() / ref.values.abs().max()
    assert err < 0.05, float(err)


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_study_records_dtype_and_reloads_in_it(tiny_dirs, tiny_corpus, tmp_path):
    out = tmp_path / "bf16"
    model = str(tiny_dirs["llama"])
    study = Study.find(out, ModelConfig(model=model, dtype="bfloat16", device="cpu"), tiny_corpus, FindConfig(k=5),
                       progress=False)
    meta = json.loads((out / "neurons.json").read_text())["meta"]
    assert (meta["model"], meta["dtype"], meta["device"], meta["device_map"]) == (model, "bfloat16", "cpu", None)
    assert study.neurons.meta["dtype"] == "bfloat16"
    # a later command loads the model in the dtype the neurons were found in (the weights check passes)
    again = Study(out, ModelConfig(model=None, device="cpu"))
    assert runtime_info(again.model)["dtype"] == "bfloat16"
    # asking for float32 explicitly is another model: refused as a dtype mismatch, before the model loads
    with pytest.raises(LangNeuronsError, match="found in bfloat16.*dtype mismatch"):
        _ = Study(out, ModelConfig(model=None, dtype="float32")).model
    with pytest.raises(LangNeuronsError, match="found on .* in bfloat16; this model is in float32: a dtype mismatch"):
        study.neurons.check_model(load_model(model))  # a model object in another dtype: the same, named
    # a float32 run into the bf16 folder is a run of other settings
    with pytest.raises(LangNeuronsError, match=r"other settings \(different dtype\)"):
        Study.find(out, ModelConfig(model=model), tiny_corpus, FindConfig(k=5), progress=False)


# ---- a model split over devices ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["bridge", "hf"])
def test_split_model_equals_unsplit(tiny_dirs, tiny_corpus, tmp_path, backend):
    path = str(tiny_dirs["llama"])
    ref = load_model(path, backend=backend)
    split = load_model(path, backend=backend, device_map=SPLIT, offload_folder=str(tmp_path / "offload"))
    hf = split.original_model
    assert hf.hf_device_map == SPLIT
    assert any(p.device.type == "meta" for p in hf.parameters())  # blocks 1-2 really live on disk
    assert runtime_info(split)["device"] == "cpu,disk" and runtime_info(split)["device_map"] == SPLIT
    assert Runner(split).device == torch.device("cpu")
    assert weights_fingerprint(split) == weights_fingerprint(ref)  # offloaded weights are read for the check

    texts = tiny_corpus.flat()[0][::4][:12]
    a = collect(ref, texts, "mlp_post", "mean", batch_size=4, progress=False, resid=True)
    b = collect(split, texts, "mlp_post", "mean", batch_size=4, progress=False, resid=True)
    torch.testing.assert_close(b.values, a.values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.resid["mean"], a.resid["mean"], atol=1e-5, rtol=1e-5)

    na = find_neurons(ref, tiny_corpus, FindConfig(k=5), progress=False)
    nb = find_neurons(split, tiny_corpus, FindConfig(k=5), progress=False)
    torch.testing.assert_close(nb.ap, na.ap, atol=1e-9, rtol=0)
    for lang in na.languages:
        for which in ("top", "bottom"):
            assert torch.equal(nb.sets[lang][which].neurons, na.sets[lang][which].neurons), (lang, which)
    na.check_model(split)  # neurons found on the unsplit model steer the split one

    ids = torch.tensor([ref.tokenizer("Das Wetter ist heute", add_special_tokens=True)["input_ids"]])
    hooks = na.hooks("de")
    with ref.hooks(fwd_hooks=hooks):
        la = ref(ids)
    with split.hooks(fwd_hooks=hooks):
        lb = split(ids)
    plain = ref(ids)
    assert not torch.allclose(la, plain, atol=1e-3)  # the clamp changes the logits ...
    torch.testing.assert_close(lb, la, atol=1e-4, rtol=1e-4)  # ... the same way on the split model

    cfg = GenerationConfig(prompt="The weather", seeds=[1, 2], max_new_tokens=6)
    with ref.hooks(fwd_hooks=hooks):
        sa = generate(ref, cfg)
    with split.hooks(fwd_hooks=hooks):
        sb = generate(split, cfg)
    assert [s.tokens for s in sb] == [s.tokens for s in sa]


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_cli_device_map_auto_offloads_and_matches(tiny_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TL_LANGNEURONS_CACHE", str(tmp_path / "cache"))  # the offload folder goes there
    model = str(tiny_dirs["llama"])
    common = ["--model", model, "--n-per-lang", "8", "--k", "5", "--quiet"]
    assert main(["find", *common, "--out", str(tmp_path / "whole")]) == 0
    # 120 KB of CPU memory holds less than the model: accelerate puts the rest on disk
    assert main(["find", *common, "--out", str(tmp_path / "split"), "--device-map", "auto",
                 "--max-memory", "cpu=120KB"]) == 0
    capsys.readouterr()
    whole = json.loads((tmp_path / "whole" / "neurons.json").read_text())["meta"]
    split = json.loads((tmp_path / "split" / "neurons.json").read_text())["meta"]
    assert whole["device"] == "cpu" and "disk" in split["device"]
    assert whole["weights_sha"] == split["weights_sha"]
    from tl_langneurons.detect.neurons import LanguageNeurons

    a, b = LanguageNeurons.load(tmp_path / "whole"), LanguageNeurons.load(tmp_path / "split")
    torch.testing.assert_close(b.ap, a.ap, atol=1e-9, rtol=0)
    # steering from the split folder runs on a split model too
    assert main(["steer", "--neurons", str(tmp_path / "split"), "--lang", "de", "--samples", "1",
                 "--max-new-tokens", "3", "--device-map", "auto", "--max-memory", "cpu=120KB", "--quiet"]) == 0
    assert "with:" in capsys.readouterr().out
