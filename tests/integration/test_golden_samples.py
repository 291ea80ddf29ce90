"""The samples of given seeds are those the generation code gave before the speed work (commit
3ef827f: fresh logits per step, one-shot sampler), recorded in tests/data/golden_samples.json by
running that code. A change that moves a single token of these requests fails here."""

import json
from pathlib import Path

import torch

from tl_langneurons import resolve_sites
from tl_langneurons.steer.generation import generate_many
from tl_langneurons.steer.interventions import clamp_hooks

GOLDEN = json.loads((Path(__file__).parents[1] / "data" / "golden_samples.json").read_text())


def gemma_key() -> str:
    """The recorded Gemma samples of this CPU: MKL's AVX-512 kernels (Intel Xeon) sum in another order than
    its AVX2 ones (AMD Zen 3, where "gemma" was recorded), which moves one token of one clamped sample. MKL
    takes its AVX-512 kernels on Intel CPUs only: an AMD EPYC with AVX-512 (family 26) gives the AVX2 samples."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    flags = next((l for l in lines if l.startswith("flags")), "")
    intel = any(l.startswith("vendor_id") and "GenuineIntel" in l for l in lines)
    return "gemma_avx512" if intel and " avx512f" in flags and "gemma_avx512" in GOLDEN else "gemma"
REQUESTS = [(None, s) for s in (1, 2, 3)] + [("Der Hund schläft im", s) for s in (4, 5)] + [("The weather today is", 6)]


def golden_run(model, entry):
    idx = resolve_sites(model, "mlp_post")
    units = torch.tensor(entry["units"])
    hooks = clamp_hooks(idx, units, torch.full((len(units),), float(entry["value"])))
    return {name: [s.tokens for s in generate_many(model, REQUESTS, max_new_tokens=entry["max_new_tokens"],
                                                   fwd_hooks=h, stop_at_eos=False, batch_size=4)]
            for name, h in (("plain", []), ("clamp", hooks))}


def test_tiny_llama_samples_equal_the_recorded_ones(tiny_llama):
    entry = GOLDEN["tiny_llama"]
    got = golden_run(tiny_llama, entry)
    assert got["plain"] == entry["plain"]
    assert got["clamp"] == entry["clamp"]
    assert got["plain"] != got["clamp"]  # the clamp is visible, so the clamped path is checked too
