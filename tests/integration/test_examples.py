"""Every example under examples/ runs on the tiny model and returns what it prints about."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", [p.stem for p in sorted(EXAMPLES.glob("*.py"))])
def test_example_is_short(name):
    assert len((EXAMPLES / f"{name}.py").read_text().splitlines()) < 80


def test_steer_en_to_ja(tiny_dirs):
    pairs = _load("steer_en_to_ja").main(str(tiny_dirs["llama"]), n_per_lang=8, k=5, samples=2, max_new_tokens=6)
    assert len(pairs) == 2 and any(a != b for a, b in pairs)


def test_clamped_residual_stream(tiny_dirs):
    changes = _load("clamped_residual_stream").main(str(tiny_dirs["llama"]), n_per_lang=8, k=5)
    assert len(changes) == 3 and max(changes) > 0


def test_ablation_sweep(tiny_dirs):
    rows = _load("ablation_sweep").main(str(tiny_dirs["llama"]), n_per_lang=8, ks=(1, 5), n_eval=3)
    assert [r[0] for r in rows] == [1, 5] and any(r[1] != 0 for r in rows)
