"""Every example under examples/ runs on the tiny model, and what it returns is what it claims:
steered samples differ from plain ones and reproduce, the clamp moves the residual stream only
from its first layer on, and the ablation rows are the loss changes of exactly those clamps."""

import importlib.util
from pathlib import Path

import pytest

import tl_langneurons as tln
from tl_langneurons.detect.neurons import LanguageNeurons

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_every_example_is_short_and_run_here():
    """Examples are examples: each script at most 80 lines, and each one run by a test of this file (or, for the
    SAE example, by test_sae_example.py in the transformer-lens 3.x + sae-lens environment)."""
    here = Path(__file__).read_text(encoding="utf-8")
    sae = (Path(__file__).parent / "test_sae_example.py").read_text(encoding="utf-8")
    scripts = sorted(EXAMPLES.glob("*.py"))
    assert scripts
    for script in scripts:
        n = len(script.read_text(encoding="utf-8").splitlines())
        assert n <= 80, f"{script.name} has {n} lines"
        assert f'"{script.stem}"' in here or script.name in sae, f"no test runs {script.name}"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def spy(monkeypatch):
    """Records the model each example loads and the neurons it finds: {"model": [...], "neurons": [...]}."""
    seen = {"model": [], "neurons": []}
    real_load, real_find = tln.load_model, tln.find_neurons

    def load_model(*a, **k):
        seen["model"].append(real_load(*a, **k))
        return seen["model"][-1]

    def find_neurons(*a, **k):
        seen["neurons"].append(real_find(*a, **k))
        return seen["neurons"][-1]

    monkeypatch.setattr(tln, "load_model", load_model)
    monkeypatch.setattr(tln, "find_neurons", find_neurons)
    return seen


def test_steer_en_to_ja(tiny_dirs, spy):
    kw = dict(n_per_lang=8, k=5, samples=3, max_new_tokens=6)
    pairs = _load("steer_en_to_ja").main(str(tiny_dirs["llama"]), **kw)
    assert len(pairs) == 3
    for plain, steered in pairs:  # every seed: the clamp changes the sample
        assert plain != steered, plain
    # reproducible: a second run (fresh model, fresh neurons) gives the same pairs
    assert _load("steer_en_to_ja").main(str(tiny_dirs["llama"]), **kw) == pairs
    # the pairs are the plain and the clamped generation for seeds 1..3
    model, neurons = spy["model"][-1], spy["neurons"][-1]
    cfg = tln.GenerationConfig(max_new_tokens=6, seeds=[1, 2, 3], prompt="My favourite season is")
    assert [s.text for s in tln.generate(model, cfg)] == [p for p, _ in pairs]
    assert [s.text for s in tln.generate(model, cfg, neurons.hooks("ja", "both"))] == [s for _, s in pairs]


def test_clamped_residual_stream(tiny_dirs, spy):
    # "en" with k=1: its two neurons (top + bottom) lie in layers 1 and 2 of the tiny model
    changes = _load("clamped_residual_stream").main(str(tiny_dirs["llama"]), lang="en", n_per_lang=8, k=1)
    neurons = spy["neurons"][-1]
    sel, _ = neurons.selected("en", "both")
    first = int(neurons.index.layers()[sel.numpy()].min())
    assert first == 1, "the premise changed: choose a language whose first clamped layer is above 0"
    assert len(changes) == 3
    assert changes[:first] == [0.0] * first  # before the first clamped layer the stream is untouched
    assert all(c > 1e-4 for c in changes[first:]), changes  # from it on, the clamp moves it


def test_ablation_sweep(tiny_dirs, spy, monkeypatch):
    from tl_langneurons.evaluate.metrics import text_losses

    ex = _load("ablation_sweep")
    rows = ex.main(str(tiny_dirs["llama"]), n_per_lang=8, ks=(1, 5), n_eval=3)
    assert [r[0] for r in rows] == [1, 5]
    assert rows[0][1] != 0 and rows[1][1] != 0 and rows[0][1] != rows[1][1]  # the change depends on k
    assert rows[1][1] > rows[0][1] > 0  # on this model, ablating more French neurons raises the French loss more
    # each row is the loss change of exactly that zero-ablation against the unclamped model
    model, neurons = spy["model"][-1], spy["neurons"][-1]
    _, held = tln.MultilingualCorpus.bundled().split(3, seed=0)

    def loss(texts, hooks=()):
        with model.hooks(fwd_hooks=list(hooks)):
            total, count = text_losses(model, texts)
        return total / count

    for k, d_fr, d_en in rows:
        hooks = neurons.hooks("fr", which="both", value="zero", k=k)
        assert d_fr == loss(held.texts["fr"], hooks) - loss(held.texts["fr"])
        assert d_en == loss(held.texts["en"], hooks) - loss(held.texts["en"])
    # no clamp (an empty hook list, as k=0 would be) gives no change at all
    monkeypatch.setattr(LanguageNeurons, "hooks", lambda self, *a, **k: [])
    assert ex.main(str(tiny_dirs["llama"]), n_per_lang=8, ks=(1, 5), n_eval=3) == [(1, 0.0, 0.0), (5, 0.0, 0.0)]


def test_sae_example_is_one_line_without_its_environment(tmp_path):
    """On transformer-lens 4.x or without sae-lens (this environment, or any other lacking them) the SAE
    example says what it needs in one line, exit 2, before loading a model; with both, its tests are in
    test_sae_example.py."""
    import subprocess
    import sys

    try:
        import sae_lens  # noqa: F401
        from transformer_lens import HookedTransformer  # noqa: F401
        pytest.skip("sae-lens and transformer-lens 3.x are installed: the example runs (test_sae_example.py)")
    except ImportError:
        pass
    r = subprocess.run([sys.executable, str(EXAMPLES / "sae_language_directions.py"), "--train-steps", "10"],
                       capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "error: this example needs" in lines[0], r.stderr[-2000:]
