"""Pooled activations: padding never matters, poolings are what they say, the forward stops
early, and the cache round-trips and refuses a mismatch."""

import dataclasses

import numpy as np
import pytest
import torch

from tl_langneurons import LangNeuronsError, PooledActivations, collect, resolve_sites
from tl_langneurons.detect.activations import make_batches, pool
from tl_langneurons.model.sites import NeuronIndex


@pytest.mark.parametrize("pooling", ["mean", "max", "last", "median"])
@pytest.mark.parametrize("include_bos", [True, False])
def test_padded_batch_equals_each_text_alone(tiny_llama, tiny_corpus, pooling, include_bos):
    texts = tiny_corpus.flat()[0][::5][:8]
    batched = collect(tiny_llama, texts, "mlp_post", pooling, include_bos, batch_size=8, progress=False)
    assert batched.meta["padded_share"] > 0  # the batch really was padded
    for i, t in enumerate(texts):
        alone = collect(tiny_llama, [t], "mlp_post", pooling, include_bos, progress=False)
        assert torch.allclose(batched.values[i], alone.values[0], atol=1e-5), (pooling, i)


def test_pool_definitions():
    x = torch.tensor([[[1.0], [3.0], [8.0], [100.0]]])
    mask = torch.tensor([[True, True, True, False]])
    assert pool(x, mask, "mean").item() == 4.0
    assert pool(x, mask, "max").item() == 8.0
    assert pool(x, mask, "last").item() == 8.0
    assert pool(x, mask, "median").item() == 3.0
    with pytest.raises(LangNeuronsError, match="unknown pooling 'sum'"):
        pool(x, mask, "sum")


def test_mean_pool_matches_run_with_cache(tiny_llama):
    text = "Die Katze schläft auf dem Sofa."
    pooled = collect(tiny_llama, [text], "mlp_post", "mean", progress=False)
    ids = [tiny_llama.tokenizer.bos_token_id] + tiny_llama.tokenizer(text, add_special_tokens=False)["input_ids"]
    _, cache = tiny_llama.run_with_cache(torch.tensor([ids]))
    ref = torch.cat([cache[f"blocks.{l}.mlp.hook_post"][0].mean(0) for l in range(3)])
    assert torch.allclose(pooled.values[0], ref, atol=1e-5)


@pytest.mark.parametrize("last", [0, 1, 2])
def test_forward_stops_after_last_site(tiny_llama, last):
    """Collecting a site of block ``last`` runs blocks 0..last and nothing after them (not the later
    blocks, not the final norm), and the pooled values equal those of a full forward pass."""
    full = resolve_sites(tiny_llama, "mlp_post")
    site = dataclasses.replace(full.slices[last], offset=0)  # only this layer's MLP units
    index = NeuronIndex(spec=f"blocks.{last}.mlp.hook_post", slices=[site])
    texts = ["a short text", "another one, a little longer"]
    hf = tiny_llama.original_model.base_model
    ran = []  # what started running, in order: ("layer", l) from PyTorch pre-hooks on the HF decoder layers
    handles = [layer.register_forward_pre_hook(lambda mod, args, l=l: ran.append(("layer", l)))
               for l, layer in enumerate(hf.layers)]
    handles.append(hf.norm.register_forward_pre_hook(lambda mod, args: ran.append(("norm",))))
    resid = [(f"blocks.{l}.hook_resid_post", lambda x, hook, l=l: ran.append(("resid_post", l))) for l in range(3)]
    try:
        with tiny_llama.hooks(fwd_hooks=resid + [("ln_final.hook_in", lambda x, hook: ran.append(("ln_final",)))]):
            pooled = collect(tiny_llama, texts, index, batch_size=1, progress=False)
    finally:
        for h in handles:
            h.remove()
    # one forward per text (batch_size=1); each runs exactly blocks 0..last, then stops
    one = [e for l in range(last + 1) for e in (("layer", l), ("resid_post", l))]
    assert ran == one + one
    # the values are those of a full forward pass (the stop changes nothing before it)
    assert pooled.values.shape == (2, 48)
    for i, text in enumerate(texts):
        ids = [tiny_llama.tokenizer.bos_token_id] + tiny_llama.tokenizer(text, add_special_tokens=False)["input_ids"]
        _, cache = tiny_llama.run_with_cache(torch.tensor([ids]))
        ref = cache[f"blocks.{last}.mlp.hook_post"][0].mean(0)
        torch.testing.assert_close(pooled.values[i], ref, rtol=0, atol=1e-5)
    # the stop hook is gone afterwards: a plain forward runs every block and the final norm again
    ran.clear()
    handles = [layer.register_forward_pre_hook(lambda mod, args, l=l: ran.append(("layer", l)))
               for l, layer in enumerate(hf.layers)]
    handles.append(hf.norm.register_forward_pre_hook(lambda mod, args: ran.append(("norm",))))
    try:
        with torch.no_grad():
            tiny_llama(torch.tensor([[1, 40, 41]]))
    finally:
        for h in handles:
            h.remove()
    assert ran == [("layer", 0), ("layer", 1), ("layer", 2), ("norm",)]


def test_batches_sorted_and_bounded():
    lengths = [5, 50, 7, 48, 6, 49]
    batches = make_batches(lengths, batch_size=2, max_batch_tokens=1000)
    assert batches == [[1, 5], [3, 2], [4, 0]]
    assert make_batches(lengths, batch_size=10, max_batch_tokens=150) == [[1, 5, 3], [2, 4, 0]]  # width = longest


def test_cache_round_trip_and_mismatch(tiny_llama, tiny_corpus, tmp_path):
    texts = tiny_corpus.flat()[0][:6]
    pa = collect(tiny_llama, texts, "mlp_post", progress=False)
    pa.meta.update({"model": "tiny"})
    path = tmp_path / "cache.safetensors"
    pa.save(path)
    back = PooledActivations.load(path, expect={"model": "tiny", "pooling": "mean"})
    assert torch.equal(back.values, pa.values) and back.index == pa.index
    with pytest.raises(LangNeuronsError, match="made for other settings \\(different pooling\\)"):
        PooledActivations.load(path, expect={"model": "tiny", "pooling": "max"})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(LangNeuronsError, match="corrupt"):
        PooledActivations.load(path)


def test_long_texts_truncated_with_warning(tiny_llama):
    long = " ".join(["word"] * 400)
    with pytest.warns(UserWarning, match="1 text\\(s\\) longer than 16 tokens were truncated"):
        pa = collect(tiny_llama, [long, "short"], "mlp_post", max_length=16, progress=False)
    assert pa.meta["n_truncated"] == 1


def test_interrupted_collection_resumes_and_equals_uninterrupted(tiny_llama, tiny_corpus, tmp_path):
    texts = tiny_corpus.flat()[0][:24]
    full = collect(tiny_llama, texts, "mlp_post", batch_size=4, progress=False)
    ckpt = tmp_path / "partial.safetensors"
    calls = []

    def interrupt(bi, n):
        calls.append(bi)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect(tiny_llama, texts, "mlp_post", batch_size=4, progress=False, checkpoint=ckpt, on_batch=interrupt)
    assert ckpt.exists()
    rerun = []
    resumed = collect(tiny_llama, texts, "mlp_post", batch_size=4, progress=False, checkpoint=ckpt,
                      on_batch=lambda bi, n: rerun.append(bi))
    assert len(rerun) == 6 - 3  # finished batches were not recomputed
    assert torch.equal(resumed.values, full.values)
    assert not ckpt.exists()
    # a partial run with other settings is refused, not silently mixed in
    with pytest.raises(KeyboardInterrupt):
        calls.clear()
        collect(tiny_llama, texts, "mlp_post", batch_size=4, progress=False, checkpoint=ckpt, on_batch=interrupt)
    with pytest.raises(LangNeuronsError, match="partial run .* other settings"):
        collect(tiny_llama, texts, "mlp_post", pooling="max", batch_size=4, progress=False, checkpoint=ckpt)


def test_long_texts_refused_by_option(tiny_llama):
    with pytest.raises(LangNeuronsError, match="text 0 has .* tokens, more than the limit 16"):
        collect(tiny_llama, [" ".join(["word"] * 50), "short"], "mlp_post", max_length=16, truncate=False, progress=False)


def test_nan_activation_names_neuron_and_text(tiny_llama):
    def poison(x, hook):
        x = x.clone()
        x[-1, :, 7] = float("nan")
        return x

    with tiny_llama.hooks(fwd_hooks=[("blocks.1.mlp.hook_post", poison)]):
        with pytest.raises(LangNeuronsError, match=r"non-finite activation at blocks.1.mlp.hook_post\[7\] on text"):
            collect(tiny_llama, ["one text here", "two"], "mlp_post", progress=False)


def test_on_disk_store_equals_in_memory(tiny_llama, tiny_corpus, tmp_path):
    from tl_langneurons.detect.neurons import find_neurons
    from tl_langneurons.detect.storage import DiskMatrix

    texts = tiny_corpus.flat()[0][:20]
    mem = collect(tiny_llama, texts, "mlp_post", batch_size=4, progress=False)
    disk = collect(tiny_llama, texts, "mlp_post", batch_size=4, progress=False, store=tmp_path / "m.npy")
    assert isinstance(disk.values, DiskMatrix) and disk.values.shape == tuple(mem.values.shape)
    assert torch.equal(disk.values[:, 0:144], mem.values)
    assert np.array_equal(np.load(tmp_path / "m.npy"), mem.values.numpy())
    a = find_neurons(tiny_llama, tiny_corpus, k=5, progress=False)
    b = find_neurons(tiny_llama, tiny_corpus, k=5, progress=False, store=tmp_path / "f.npy")
    assert torch.equal(a.ap, b.ap) and torch.equal(a.medians, b.medians) and torch.equal(a.mean_all, b.mean_all)
    with pytest.raises(LangNeuronsError, match="column chunks only"):
        disk.values[0, :]


def test_collect_poolings_equals_one_collect_per_pooling(tiny_llama, tiny_corpus):
    from tl_langneurons import collect_poolings

    texts = tiny_corpus.flat()[0][:12]
    many = collect_poolings(tiny_llama, texts, "mlp_post", ["mean", "max", "last", "median"], batch_size=5, progress=False)
    assert list(many) == ["mean", "max", "last", "median"]
    for p, res in many.items():
        one = collect(tiny_llama, texts, "mlp_post", p, batch_size=5, progress=False)
        assert res.meta["pooling"] == p
        assert torch.equal(res.values, one.values), p
    with pytest.raises(LangNeuronsError, match="unknown pooling 'sum'"):
        collect_poolings(tiny_llama, texts, "mlp_post", ["mean", "sum"])
    with pytest.raises(LangNeuronsError, match="without repeats"):
        collect_poolings(tiny_llama, texts, "mlp_post", ["mean", "mean"])


def test_collection_progress_off_a_terminal_is_a_few_lines(tiny_llama, tiny_corpus, capsys):
    """In a log (pytest's stderr is not a terminal) collection prints plain lines, no carriage returns."""
    from tl_langneurons import collect

    texts, _ = tiny_corpus.flat()
    collect(tiny_llama, texts, progress=True)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("collect")]
    assert "\r" not in err and 2 <= len(lines) <= 5
    assert lines[0].endswith(f"started, {len(texts)} text") and lines[-1].startswith("collect mean @ mlp_post: done in")
