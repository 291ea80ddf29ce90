"""Sites: the paper preset reproduces the paper's neuron counts (Table 3) on meta-device models,
and site specs resolve on real and tiny models."""

import pytest
import torch

from tl_langneurons import HFHookedModel, LangNeuronsError, resolve_sites


def _meta_model(cfg):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


class _Tok:
    bos_token_id = 0
    eos_token_id = 1
    pad_token_id = 1


PAPER = [
    # family, hidden, layers, mlp, expected count (paper Table 3)
    ("xglm", 1024, 24, 4096, 221_184), ("xglm", 2048, 24, 8192, 442_368), ("xglm", 2048, 48, 8192, 884_736),
    ("bloom", 1024, 24, 4096, 221_184), ("bloom", 2048, 24, 8192, 442_368), ("bloom", 2560, 30, 10240, 691_200),
    ("llama", 4096, 32, 11008, 1_359_872), ("llama", 5120, 40, 13824, 2_129_920),
]


@pytest.mark.parametrize("family,hidden,layers,mlp,expected", PAPER)
def test_paper_preset_counts_match_table3(family, hidden, layers, mlp, expected):
    from transformers import BloomConfig, LlamaConfig, XGLMConfig

    if family == "xglm":
        cfg = XGLMConfig(d_model=hidden, num_layers=layers, ffn_dim=mlp, attention_heads=16, vocab_size=1000)
    elif family == "bloom":
        cfg = BloomConfig(hidden_size=hidden, n_layer=layers, n_head=16, vocab_size=1000)
        assert 4 * hidden == mlp  # BLOOM's MLP is 4 x hidden
    else:
        cfg = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=mlp,
                          num_attention_heads=32, num_key_value_heads=32, vocab_size=1000)
    model = HFHookedModel(_meta_model(cfg), _Tok())
    idx = resolve_sites(model, "paper")
    assert idx.n_neurons == expected
    assert idx.n_layers == layers
    assert resolve_sites(model, "mlp_post").n_neurons == layers * mlp


def test_site_errors(tiny_llama):
    with pytest.raises(LangNeuronsError, match="unknown site 'mlp_out'"):
        resolve_sites(tiny_llama, "mlp_out")
    with pytest.raises(LangNeuronsError, match="does not exist on this model"):
        resolve_sites(tiny_llama, "blocks.{l}.mlp.hook_nothing")
    with pytest.raises(LangNeuronsError, match="empty site spec"):
        resolve_sites(tiny_llama, "")


def test_site_templates_and_index(tiny_llama):
    idx = resolve_sites(tiny_llama, "mlp_post,blocks.{l}.hook_resid_post")
    assert [s.hook for s in idx.slices[:2]] == ["blocks.0.mlp.hook_post", "blocks.0.hook_resid_post"]
    assert idx.n_neurons == 3 * (48 + 32)
    site, unit = idx.locate(48 + 5)
    assert (site.hook, unit) == ("blocks.0.hook_resid_post", 5)
    assert idx.describe(idx.n_neurons - 1) == "blocks.2.hook_resid_post[31]"
    with pytest.raises(IndexError):
        idx.locate(idx.n_neurons)


def test_single_hook_sites(tiny_llama):
    """A hook name without {l} is a site on its own layer only (an SAE's latents exist on one layer); it
    mixes with templates, keeps the layer order, and a name beyond the model or absent is one error."""
    idx = resolve_sites(tiny_llama, "blocks.1.hook_resid_post")
    assert [(s.hook, s.layer, s.size) for s in idx.slices] == [("blocks.1.hook_resid_post", 1, 32)]
    mixed = resolve_sites(tiny_llama, "blocks.2.hook_resid_post,mlp_post")
    assert [s.hook for s in mixed.slices] == ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post",  # spec order
                                             "blocks.2.hook_resid_post", "blocks.2.mlp.hook_post"]
    with pytest.raises(LangNeuronsError, match="beyond this model's 3 layers"):
        resolve_sites(tiny_llama, "blocks.7.hook_resid_post")
    with pytest.raises(LangNeuronsError, match="does not exist on this model"):
        resolve_sites(tiny_llama, "blocks.1.hook_resid_post.hook_sae_acts_post")


@pytest.mark.slow  # find and steer end to end through the command line
def test_single_hook_site_finds_and_steers(tiny_dirs, tmp_path, capsys):
    """find --sites on one layer's hook, then steer those units: the hooks sit on that layer only, and
    clamping them changes the generated text."""
    from tl_langneurons import LanguageNeurons
    from tl_langneurons.cli import main

    out = tmp_path / "one"
    assert main(["find", "--model", str(tiny_dirs["llama"]), "--corpus", "bundled", "--n-per-lang", "6", "--k", "4",
                 "--sites", "blocks.1.mlp.hook_post", "--out", str(out), "--quiet"]) == 0
    n = LanguageNeurons.load(out)
    assert n.index.spec == "blocks.1.mlp.hook_post" and {s.layer for s in n.index.slices} == {1}
    assert {name for name, _ in n.hooks("de")} == {"blocks.1.mlp.hook_post"}
    assert "| - | - | - |" not in (out / "layers.md").read_text()  # placement of a one-layer site: all in L1
    capsys.readouterr()
    assert main(["steer", "--neurons", str(out), "--lang", "de", "--samples", "3", "--max-new-tokens", "6",
                 "--scale", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    without = [l.split(":", 1)[1] for l in lines if l.strip().startswith("without:")]
    steered = [l.split(":", 1)[1] for l in lines if l.strip().startswith("with:")]
    assert len(without) == len(steered) == 3 and without != steered
