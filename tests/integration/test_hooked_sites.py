"""Neurons found at `--sites paper` on one backend steer the other: folders record the bridge's site names, and a
HookedTransformer binds its own hooks to them (attn.hook_q for attn.q.hook_out, ...). A site without a counterpart
(a HookedTransformer's hook_attn_out after a post-norm) is refused in one line naming it; folders that recorded a
HookedTransformer's own names still steer it. transformer-lens 3.x only (CI runs it in its 3.x env)."""

import json

import pytest
import torch

from tl_langneurons import LangNeuronsError, LanguageNeurons, find_neurons, load_model, resolve_sites
from tl_langneurons.cli import main
from tl_langneurons.steer.generation import generate_many
from tl_langneurons.steer.methods import SteeringConfig

try:
    from transformer_lens import HookedTransformer
except ImportError:  # transformer-lens 4.x
    HookedTransformer = None

pytestmark = pytest.mark.skipif(HookedTransformer is None,
                                reason="transformer-lens 4.x has no HookedTransformer (CI runs this in its 3.x env)")

REQUESTS = [("Hello world", 1), (None, 2), ("Das ist ein Test der", 3)]
HOOKED_NAMES = {"attn.hook_q", "attn.hook_k", "attn.hook_v", "hook_attn_out", "mlp.hook_pre", "mlp.hook_pre_linear",
                "hook_mlp_out"}


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    d = str(tiny_dirs["llama"])
    return load_model(d, backend="bridge"), load_model(d, backend="hooked")


@pytest.fixture(scope="module")
def folders(pair, tiny_corpus, tmp_path_factory):
    """Paper-site neurons found on each backend, saved: {"TransformerBridge": dir, "HookedTransformer": dir}."""
    root = tmp_path_factory.mktemp("paper")
    out = {}
    for model in pair:
        out[type(model).__name__] = find_neurons(model, tiny_corpus, sites="paper", k=8, progress=False).save(
            root / type(model).__name__)
    return out


def _suffix(hook: str) -> str:
    return hook.split(".", 2)[2]


def test_paper_index_is_the_same_on_both_backends_with_each_ones_hooks(pair):
    bridge, ht = pair
    ib, ih = resolve_sites(bridge, "paper"), resolve_sites(ht, "paper")
    assert ib == ih and ib.to_dict() == ih.to_dict()
    assert {_suffix(s.hook) for s in ih.slices} == HOOKED_NAMES  # what the HookedTransformer hooks ...
    assert [s.template for s in ih.slices] == [s.template for s in ib.slices]  # ... under the bridge's names
    assert all(s.hook in ht.hook_dict for s in ih.slices) and all(s.hook in bridge.hook_dict for s in ib.slices)


def test_a_hooked_folder_records_the_canonical_names(folders):
    recorded = json.loads((folders["HookedTransformer"] / "neurons.json").read_text())["index"]["slices"]
    bridge = json.loads((folders["TransformerBridge"] / "neurons.json").read_text())["index"]["slices"]
    assert [s["hook"] for s in recorded] == [s["hook"] for s in bridge]
    assert not {_suffix(s["hook"]) for s in recorded} & HOOKED_NAMES


@pytest.mark.parametrize("found_on", ["TransformerBridge", "HookedTransformer"])
def test_paper_neurons_steer_the_other_backend_as_their_own(pair, folders, found_on):
    """Loaded on either backend, a folder's neurons give the tokens the bridge gives with them (the backends'
    logits agree to float rounding; test_hooked.py shows the same for neurons found on each)."""
    steering = SteeringConfig(method="add", alpha=4.0)
    tokens = {}
    for model in pair:
        neurons = LanguageNeurons.load(folders[found_on])
        neurons.check_model(model)  # binds the model's own hook names
        assert all(s.hook in model.hook_dict for s in neurons.index.slices)
        lang = neurons.languages[1]
        tokens[type(model).__name__] = [s.tokens for s in generate_many(
            model, REQUESTS, max_new_tokens=8, stop_at_eos=False, fwd_hooks=steering.hooks(neurons, lang))]
    plain = [s.tokens for s in generate_many(pair[1], REQUESTS, max_new_tokens=8, stop_at_eos=False)]
    assert tokens["HookedTransformer"] == tokens["TransformerBridge"] != plain


def test_paper_neurons_cross_backends_on_the_command_line(tiny_dirs, folders, capsys):
    model = str(tiny_dirs["llama"])
    for folder, backend in ((folders["TransformerBridge"], "hooked"), (folders["HookedTransformer"], "bridge")):
        assert main(["steer", "--neurons", str(folder), "--model", model, "--backend", backend, "--lang", "de",
                     "--samples", "1", "--max-new-tokens", "4", "--quiet"]) == 0, capsys.readouterr().err


def _legacy(index_dict: dict) -> dict:
    """An index as folders found on a HookedTransformer recorded it before the canonical names: its own names."""
    ht = {"attn.q.hook_out": "attn.hook_q", "attn.k.hook_out": "attn.hook_k", "attn.v.hook_out": "attn.hook_v",
          "attn.o.hook_out": "hook_attn_out", "mlp.gate.hook_out": "mlp.hook_pre",
          "mlp.in.hook_out": "mlp.hook_pre_linear", "mlp.out.hook_out": "hook_mlp_out"}
    out = []
    for s in index_dict["slices"]:
        tail = ht[s["template"].split(".", 2)[2]]
        out.append({**s, "template": "blocks.{l}." + tail, "hook": f"blocks.{s['layer']}.{tail}"})
    return {**index_dict, "slices": out}


def test_a_folder_with_the_hooked_transformers_own_names_still_steers_it(pair, folders, tmp_path, capsys):
    bridge, ht = pair
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for f in folders["HookedTransformer"].iterdir():
        (legacy / f.name).write_bytes(f.read_bytes())
    info = json.loads((legacy / "neurons.json").read_text())
    info["index"] = _legacy(info["index"])
    (legacy / "neurons.json").write_text(json.dumps(info))
    neurons = LanguageNeurons.load(legacy)
    neurons.check_model(ht)
    assert neurons.index.slices[0].hook == "blocks.0.attn.hook_q"
    with pytest.raises(LangNeuronsError, match=r"site blocks\.0\.attn\.hook_q .*has no counterpart on this "
                                               r"TransformerBridge") as e:
        LanguageNeurons.load(legacy).check_model(bridge)
    assert "\n" not in str(e.value)


def test_a_site_without_a_counterpart_is_refused_in_one_line(pair, folders, monkeypatch):
    """Where a HookedTransformer normalises the attention output before hook_attn_out (Gemma's sandwich norms;
    stated here for the tiny model, tests/real/test_hooked_gemma.py has the real one), the bridge's o projection
    output has no counterpart on it, and its hook_attn_out none on the bridge."""
    from tl_langneurons.model import sites

    bridge, ht = pair
    monkeypatch.setattr(sites, "_post_norm", lambda model: isinstance(model, HookedTransformer))
    index = resolve_sites(ht, "paper")
    assert "blocks.{l}.hook_attn_out" in {s.template for s in index.slices}
    with pytest.raises(LangNeuronsError, match=r"site blocks\.0\.attn\.o\.hook_out .*no counterpart on this "
                                               r"HookedTransformer: .*hook_attn_out comes after the norm") as e:
        LanguageNeurons.load(folders["TransformerBridge"]).check_model(ht)
    assert "\n" not in str(e.value)
    neurons = LanguageNeurons.load(folders["HookedTransformer"])
    neurons.index = index  # as if found on that model
    with pytest.raises(LangNeuronsError, match=r"site blocks\.0\.hook_attn_out .*no counterpart on this "
                                               r"TransformerBridge: hook_attn_out is a HookedTransformer's attention"):
        neurons.check_model(bridge)
