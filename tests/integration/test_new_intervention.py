"""A new intervention lands as one module and one ``register`` call: this file defines ``multiply`` (the
selected neurons times ``alpha``), registers it, and runs it through ``steer``, ``evaluate``, ``sweep`` and
``cross-steer`` on the command line and the API, with no other module changed. Its hooks are checked against a
hand-written reference, and its samples against generation under those hooks."""

from __future__ import annotations

import json

import pytest
import torch

from tl_langneurons.cli import main
from tl_langneurons.detect.neurons import LanguageNeurons
from tl_langneurons.model.sites import flat_units
from tl_langneurons.registry import INTERVENTIONS, register
from tl_langneurons.steer.base import SELECTION, NeuronIntervention
from tl_langneurons.steer.generation import generate_many
from tl_langneurons.steer.positions import gate
from tl_langneurons.steer.setting import SteeringConfig


class Multiply(NeuronIntervention):
    """``a_n <- alpha * a_n`` on the selected neurons (alpha 1: the identity)."""

    name = "multiply"
    fields = (*SELECTION, "alpha")
    scaled = ("alpha",)
    axes = ("k", "alpha", "layers")

    def describe(self) -> str:
        return f"multiply{self.selection_label()} x{self.setting.alpha:g}"

    def build(self, neurons: LanguageNeurons, lang: str, positions: str):
        sel, _ = self.selection(neurons, lang)
        hooks = []
        for sl in neurons.index.slices:
            units = sel[(sel >= sl.offset) & (sel < sl.offset + sl.size)] - sl.offset
            if len(units):
                def fn(x, hook, _u=units, _a=float(self.setting.alpha)):
                    flat = flat_units(x).clone()
                    flat[:, :, _u] = flat[:, :, _u] * _a
                    return flat.reshape(x.shape)
                hooks.append((sl.hook, fn))
        return gate(hooks, positions)


@pytest.fixture
def multiply():
    register(Multiply)
    yield Multiply
    INTERVENTIONS.pop("multiply")


@pytest.fixture(scope="module")
def found(tiny_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("multiply") / "n"
    assert main(["find", "--model", str(tiny_dirs["llama"]), "--corpus", "bundled", "--n-per-lang", "12", "--k", "10",
                 "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    return out


def test_multiply_hooks_equal_a_hand_written_reference(multiply, tiny_llama, found):
    neurons = LanguageNeurons.load(found)
    st = SteeringConfig(method="multiply", alpha=3.0, which="top", k=6)
    assert st.label() == "multiply top k=6 x3" and st.neuron_level
    sel, _ = neurons.selected("de", "top", 6)
    ids = tiny_llama.to_tokens("The weather today")

    def reference(layer):  # every selected unit of this layer, times 3, by a slow loop (keyed by closure: a
        def fn(x, hook):      # bridge's hook.name is its canonical name, not the alias)
            out = x.clone()
            for g in sel.tolist():
                if neurons.index.layers()[g] == layer:
                    out[..., g - neurons.index.slices[layer].offset] *= 3.0
            return out
        return fn

    ref = tiny_llama.run_with_hooks(ids, fwd_hooks=[(sl.hook, reference(i)) for i, sl in enumerate(neurons.index.slices)])
    assert not torch.allclose(ref, tiny_llama(ids))
    got = tiny_llama.run_with_hooks(ids, fwd_hooks=st.hooks(neurons, "de"))
    torch.testing.assert_close(got, ref)
    same = tiny_llama.run_with_hooks(ids, fwd_hooks=SteeringConfig(method="multiply", alpha=1.0).hooks(neurons, "de"))
    torch.testing.assert_close(same, tiny_llama(ids))  # alpha 1 is the identity
    # the same hooks through LanguageNeurons.hooks, and a field it does not have refused in one line
    torch.testing.assert_close(tiny_llama.run_with_hooks(ids, fwd_hooks=neurons.hooks("de", method="multiply",
                                                                                      which="top", k=6, alpha=3.0)),
                               ref)
    with pytest.raises(Exception, match="--band-alphas is for add, not multiply"):
        SteeringConfig(method="multiply", band_alphas="last:0.5")


def test_multiply_through_steer_evaluate_sweep_and_cross_steer(multiply, tiny_llama, found, capsys):
    n = str(found)
    quick = ["--max-new-tokens", "3", "--quiet"]
    assert main(["steer", "--neurons", n, "--lang", "de", "--method", "multiply", "--alpha", "4", "--which", "top",
                 "--samples", "2", "--max-new-tokens", "4", "The weather"]) == 0
    out = capsys.readouterr().out
    assert "(multiply top x4)" in out and out.count("with:") == 2
    # the steered samples are generation under the intervention's hooks, seed for seed
    neurons = LanguageNeurons.load(found)
    hooks = SteeringConfig(method="multiply", alpha=4.0, which="top").hooks(neurons, "de")
    want = generate_many(tiny_llama, [("The weather", 1), ("The weather", 2)], max_new_tokens=4, fwd_hooks=hooks)
    for w in want:
        assert " ".join(w.text.split()) in out

    assert main(["evaluate", "--neurons", n, "--method", "multiply", "--alpha", "2", "--samples", "2",
                 "--languages", "de", "--ablation-ks", "none", *quick]) == 0
    ev = json.loads((found / "control" / "evaluation.json").read_text())
    assert ev["meta"]["config"]["steering"]["method"] == "multiply" and ev["table2"]

    assert main(["sweep", "--neurons", n, "--method", "multiply", "--languages", "de", "--k-fractions", "5%",
                 "--alphas", "0.5,3", "--layer-sets", "all", "--val-samples", "1", "--test-samples", "1", *quick]) == 0
    sweep = json.loads((found / "sweep-multiply" / "sweep.json").read_text())
    assert [s["stage"] for s in sweep["stages"]] == ["k", "alpha", "alpha", "layers"]
    assert sweep["best"]["de"]["method"] == "multiply"
    assert any(r["setting"] == "best multiply" for r in sweep["test"])

    assert main(["cross-steer", "--neurons", n, "--heldout", "bundled", "--from-sweep", str(found / "sweep-multiply"),
                 "--n-prompts", "1", "--samples", "1", *quick]) == 0
    got = json.loads((found / "analyses" / "cross_steering.json").read_text())
    assert "de multiply" in got["method"]
    # a second sweep reads every cell back and generates nothing
    capsys.readouterr()
    assert main(["sweep", "--neurons", n, "--method", "multiply", "--languages", "de", "--k-fractions", "5%",
                 "--alphas", "0.5,3", "--layer-sets", "all", "--val-samples", "1", "--test-samples", "1", *quick]) == 0
    assert json.loads((found / "sweep-multiply" / "sweep.json").read_text())["test"] == sweep["test"]
