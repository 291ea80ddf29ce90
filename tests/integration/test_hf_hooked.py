"""The fallback backend is a TransformerLens HookedRootModule: it matches TransformerBridge
activation for activation, clamps exactly, supports backward hooks, names filters and
ActivationCache, and never leaves a hook behind; load_model handles folders, objects and offline
hub names."""

import pytest
import torch
from torch import nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

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


# ---- TransformerLens behaviour of the fallback ---------------------------------------------------

def _llama_names(n_layers=3):
    per_layer = [f"attn.{r}.hook_{d}" for r in "qkvo" for d in ("in", "out")]
    per_layer += [f"mlp.{r}.hook_{d}" for r in ("gate", "in", "out") for d in ("in", "out")]
    per_layer += ["mlp.hook_post", "mlp.hook_pre", "mlp.hook_pre_linear", "hook_resid_post"]
    return {f"blocks.{l}.{n}" for l in range(n_layers) for n in per_layer}


def _no_lens_hooks(model) -> bool:
    return model.list_hooks() == {} and all(
        not hp._forward_hooks and not hp._backward_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize("arch", ARCHS)
def test_fallback_is_hooked_root_module(pairs, arch):
    _, fallback = pairs[arch]
    assert isinstance(fallback, HookedRootModule)
    points = {n: m for n, m in fallback.named_modules() if isinstance(m, HookPoint)}
    assert set(points) == set(fallback.hook_dict)  # named_modules gives exactly the hook names
    for name, hp in fallback.hook_dict.items():
        assert isinstance(hp, HookPoint) and hp.name == name
        assert fallback.mod_dict[name] is hp and points[name] is hp
    assert not any(n.startswith("original_model") for n in fallback.mod_dict)
    if arch == "llama":
        assert set(fallback.hook_dict) == _llama_names()
        assert isinstance(fallback.mod_dict["blocks.0.mlp"], nn.Module)
    assert fallback.cfg.n_layers == 3 == fallback.n_layers
    # the Runner's context length is the HF config's (BLOOM has none: the Runner default)
    from tl_langneurons.model.driver import Runner

    expected = {"llama": 256, "xglm": 256, "bloom": None}[arch]
    assert fallback.cfg.n_ctx == expected
    assert Runner(fallback).max_length == (expected or 2048)


def test_fallback_bwd_hooks(pairs):
    _, fallback = pairs["llama"]
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    name = "blocks.1.mlp.hook_post"
    seen = {}

    def grad_hook(g, hook):
        seen[hook.name] = g.detach().clone()

    with fallback.hooks(bwd_hooks=[(name, grad_hook)]):
        loss = fallback(ids, return_type="loss")
        assert name not in seen  # backward hooks fire in the backward pass only
        loss.backward()
    assert set(seen) == {name}
    fallback.zero_grad(set_to_none=True)

    acts = {}

    def keep(x, hook):
        x.retain_grad()
        acts["x"] = x

    with fallback.hooks(fwd_hooks=[(name, keep)]):
        loss = fallback(ids, return_type="loss")
    act = acts["x"]
    loss.backward()
    fallback.zero_grad(set_to_none=True)
    with fallback.hooks(fwd_hooks=[(name, lambda x, hook: acts.__setitem__("y", x))]):
        loss = fallback(ids, return_type="loss")
    (via_autograd,) = torch.autograd.grad(loss, acts["y"])
    assert seen[name].shape == (1, 5, 48) and seen[name].abs().sum() > 0
    assert torch.allclose(seen[name], act.grad, atol=1e-7, rtol=0)
    assert torch.allclose(seen[name], via_autograd, atol=1e-7, rtol=0)

    # removed after the block: another backward pass does not reach it
    assert _no_lens_hooks(fallback)
    seen.clear()
    fallback(ids, return_type="loss").backward()
    fallback.zero_grad(set_to_none=True)
    assert seen == {}

    # add_hook(dir="bwd") + reset_hooks, and run_with_cache(incl_bwd=True)
    fallback.add_hook(name, grad_hook, dir="bwd")
    assert len(fallback.hook_dict[name].bwd_hooks) == 1
    fallback.reset_hooks()
    assert _no_lens_hooks(fallback)
    _, cache = fallback.run_with_cache(ids, return_type="loss", names_filter=name, incl_bwd=True)
    fallback.zero_grad(set_to_none=True)
    assert sorted(cache.keys()) == [name, name + "_grad"]
    assert torch.allclose(cache[name + "_grad"], via_autograd, atol=1e-7, rtol=0)
    assert _no_lens_hooks(fallback)


def test_fallback_names_filters(pairs):
    _, fallback = pairs["llama"]
    ids = torch.tensor([[1, 5, 6]])
    _, one = fallback.run_with_cache(ids, names_filter="blocks.2.attn.q.hook_out")
    assert list(one.keys()) == ["blocks.2.attn.q.hook_out"]
    assert one["blocks.2.attn.q.hook_out"].shape == (1, 3, 32)
    wanted = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_pre", "blocks.2.mlp.gate.hook_in"]
    _, several = fallback.run_with_cache(ids, names_filter=wanted)
    assert sorted(several.keys()) == sorted(wanted)
    _, by_fn = fallback.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
    assert sorted(by_fn.keys()) == [f"blocks.{l}.hook_resid_post" for l in range(3)]
    _, everything = fallback.run_with_cache(ids)
    assert set(everything.keys()) == _llama_names()
    with pytest.raises(LangNeuronsError, match="does not exist"):
        fallback.run_with_cache(ids, names_filter=["blocks.0.mlp.hook_post", "blocks.0.mlp.hook_nothing"])
    with pytest.raises(LangNeuronsError, match="does not exist"):
        fallback.run_with_cache(ids, names_filter="blocks.7.mlp.hook_post")
    # a filter function as the name of a forward hook
    fired = []
    is_pre = lambda n: n.endswith("mlp.hook_pre")
    fallback.run_with_hooks(ids, fwd_hooks=[(is_pre, lambda x, hook: fired.append(hook.name))])
    assert fired == [f"blocks.{l}.mlp.hook_pre" for l in range(3)]
    assert _no_lens_hooks(fallback)


def test_fallback_cache_equals_bridge(pairs):
    bridge, fallback = pairs["llama"]
    ids = fallback.tokenizer(["Der Hund schläft im Garten."], return_tensors="pt").input_ids
    names = [f"blocks.{l}.mlp.hook_post" for l in range(3)] + [f"blocks.{l}.hook_resid_post" for l in range(3)]
    logits_f, cache_f = fallback.run_with_cache(ids, names_filter=lambda n: n in names)
    with torch.no_grad():
        logits_b, cache_b = bridge.run_with_cache(ids, names_filter=lambda n: n in names)
    assert isinstance(cache_f, ActivationCache)
    assert sorted(cache_f.keys()) == sorted(names)
    for name in names:
        assert not cache_f[name].requires_grad  # cache values are detached
        assert cache_f[name].shape == cache_b[name].shape
        assert torch.allclose(cache_f[name], cache_b[name], atol=1e-5, rtol=0), name
    assert torch.allclose(logits_f, logits_b, atol=1e-5, rtol=0)
    # the HF model's own forward fires the HookPoints too (Runner calls it directly)
    _, via_hf = fallback.run_with_cache(ids, names_filter=names[0])
    seen = {}
    with fallback.hooks(fwd_hooks=[(names[0], lambda x, hook: seen.setdefault(hook.name, x.detach()))]), \
            torch.no_grad():
        fallback.original_model(input_ids=ids)
    assert torch.equal(seen[names[0]], via_hf[names[0]])
    # remove_batch_dim
    _, single = fallback.run_with_cache(ids, names_filter=names[0], remove_batch_dim=True)
    assert single[names[0]].shape == cache_f[names[0]].shape[1:]


def test_fallback_returned_tensor_replaces_activation(pairs):
    bridge, fallback = pairs["llama"]
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])

    def edit(x, hook):
        y = x.clone()
        y[..., :10] = 0.0
        return y * 1.5

    hooks = [("blocks.1.mlp.hook_post", edit), ("blocks.0.attn.v.hook_out", lambda x, hook: -x)]
    with torch.no_grad():
        plain = fallback(ids)
        edited = fallback.run_with_hooks(ids, fwd_hooks=hooks)
        edited_br = bridge.run_with_hooks(ids, fwd_hooks=hooks)
        after = fallback(ids)
    assert not torch.allclose(plain, edited, atol=1e-3)
    assert torch.allclose(edited, edited_br, atol=1e-5, rtol=0)
    assert torch.equal(plain, after)  # the edit was temporary


def test_fallback_hooks_removed_after_exception_in_block(pairs):
    _, fallback = pairs["llama"]
    ids = torch.tensor([[1, 5, 6]])
    before = _count_hooks(fallback)
    with torch.no_grad():
        plain = fallback(ids)
    calls = []

    def spy(x, hook):
        calls.append(hook.name)
        return torch.zeros_like(x)

    with pytest.raises(RuntimeError, match="inside the block"), \
            fallback.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", spy)], bwd_hooks=[("blocks.1.mlp.hook_post", spy)]):
        assert _count_hooks(fallback) == before + 1
        assert len(fallback.hook_dict["blocks.1.mlp.hook_post"]._backward_hooks) == 1
        with torch.no_grad():
            fallback(ids)
        raise RuntimeError("inside the block")
    assert calls == ["blocks.0.mlp.hook_post"]
    assert _count_hooks(fallback) == before and _no_lens_hooks(fallback)
    with torch.no_grad():
        assert torch.equal(fallback(ids), plain)
    assert calls == ["blocks.0.mlp.hook_post"]
    with pytest.raises(LangNeuronsError, match="does not exist"):
        fallback.add_hook("blocks.0.mlp.hook_nothing", spy)
    with pytest.raises(LangNeuronsError, match="does not exist"):
        fallback.hook_size("blocks.0.mlp")
