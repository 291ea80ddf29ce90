"""The forward-hook fallback matches TransformerBridge activation for activation, clamps exactly,
and never leaves a hook behind; load_model handles folders, objects and offline hub names."""

import pytest
import torch
from torch import nn

from tl_langneurons import (
    HFHookedModel,
    LangNeuronsError,
    collect,
    load_model,
    resolve_sites,
)
from tl_langneurons.steer.interventions import clamp_hooks

ARCHS = ["llama", "xglm", "bloom"]


def _count_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def pairs(tiny_dirs):
    out = {}
    for arch in ARCHS:
        bridge = load_model(str(tiny_dirs[arch]), backend="bridge")
        fallback = load_model(str(tiny_dirs[arch]), backend="hf")
        out[arch] = (bridge, fallback)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_load_backends(pairs, arch):
    bridge, fallback = pairs[arch]
    assert type(bridge).__name__ == "TransformerBridge"
    assert isinstance(fallback, HFHookedModel)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sites", ["mlp_post", "mlp_pre", "paper"])
def test_fallback_equals_bridge(pairs, tiny_corpus, arch, sites):
    bridge, fallback = pairs[arch]
    texts = tiny_corpus.flat()[0][:10]
    ib, if_ = resolve_sites(bridge, sites), resolve_sites(fallback, sites)
    assert ib.n_neurons == if_.n_neurons
    if not (arch == "bloom" and sites == "paper"):
        assert [s.size for s in ib.slices] == [s.size for s in if_.slices]
    a = collect(bridge, texts, sites, pooling="mean", progress=False).values
    b = collect(fallback, texts, sites, pooling="mean", progress=False).values
    if arch == "bloom" and sites == "paper":
        # the fallback reports BLOOM's fused query_key_value in its native [head, (q k v), d_head]
        # order; the bridge splits it into q, k, v. Same units, other column order.
        assert any(s.hook.endswith("attn.qkv.hook_out") for s in if_.slices)
        perm = []
        for sl in if_.slices:
            cols = list(range(sl.offset, sl.offset + sl.size))
            if sl.hook.endswith("attn.qkv.hook_out"):
                cols = torch.tensor(cols).view(4, 3, 8).permute(1, 0, 2).reshape(-1).tolist()
            perm += cols
        b = b[:, perm]
    assert torch.allclose(a, b, atol=1e-6, rtol=0), (a - b).abs().max()


@pytest.mark.parametrize("arch", ARCHS)
def test_fallback_clamp_changes_logits_exactly_as_bridge(pairs, arch, tokenizer_dir):
    bridge, fallback = pairs[arch]
    ids = fallback.tokenizer(["Der Hund schläft im Garten."], return_tensors="pt").input_ids
    idx = resolve_sites(fallback, "mlp_post")
    neurons = torch.tensor([0, 5, idx.n_neurons - 1])
    values = torch.tensor([3.0, -2.0, 1.5])
    seen = {}

    def spy(x, hook):
        seen["x"] = x.detach().clone()

    last = idx.slices[-1].hook
    with torch.no_grad():
        plain = fallback(ids)
        with fallback.hooks(clamp_hooks(idx, neurons, values) + [(last, spy)]):
            clamped_fb = fallback(ids)
        with bridge.hooks(fwd_hooks=clamp_hooks(resolve_sites(bridge, "mlp_post"), neurons, values)):
            clamped_br = bridge(ids)
    assert torch.all(seen["x"][0, :, idx.slices[-1].size - 1] == 1.5)  # the hook saw the clamped value
    assert not torch.allclose(plain, clamped_fb)
    assert torch.allclose(clamped_fb, clamped_br, atol=1e-5)


def test_fallback_hooks_removed_on_error(pairs):
    _, fallback = pairs["llama"]
    before = _count_hooks(fallback)
    ids = torch.tensor([[1, 5, 6]])

    def boom(x, hook):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with fallback.hooks([("blocks.1.mlp.hook_post", boom)]):
            fallback(ids)
    assert _count_hooks(fallback) == before
    with pytest.raises(LangNeuronsError, match="does not exist"):
        fallback.run_with_hooks(ids, fwd_hooks=[("blocks.9.mlp.hook_post", boom)])
    assert _count_hooks(fallback) == before


def test_fallback_run_with_cache_shapes(pairs):
    _, fallback = pairs["llama"]
    ids = torch.tensor([[1, 5, 6, 7]])
    logits, cache = fallback.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_post"))
    assert logits.shape[:2] == (1, 4)
    assert sorted(cache) == [f"blocks.{i}.mlp.hook_post" for i in range(3)]
    assert cache["blocks.0.mlp.hook_post"].shape == (1, 4, 48)


def test_load_model_objects(tiny_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"])
    tok = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    bridge = load_model(hf, tokenizer=tok)
    assert type(bridge).__name__ == "TransformerBridge"
    assert load_model(bridge) is bridge  # an already-built hooked model is used as is
    with pytest.raises(LangNeuronsError, match="needs its tokenizer"):
        load_model(AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]))
    with pytest.raises(LangNeuronsError, match="unsupported model object Linear"):
        load_model(nn.Linear(2, 2))


def test_load_model_offline_hub_name_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LangNeuronsError) as e:
        load_model("facebook/xglm-564M")
    msg = str(e.value)
    assert "not available offline" in msg and "local folder" in msg and "\n" not in msg


def test_load_model_bad_folder(tmp_path):
    with pytest.raises(LangNeuronsError, match="not a model folder"):
        load_model(str(tmp_path))
