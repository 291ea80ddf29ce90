"""The script gate (tl_langneurons/steer/script_gate.py): how long its mask takes to build and what share of the
vocabulary each LCB language keeps, strict and with Latin letters allowed; with --evidence, what decides the
default for Latin letters in the languages of other scripts.

    python benchmarks/bench_script_gate.py [--model gemma-3-270m] [--evidence] [--requests 12] [--no-record]

--evidence adds two measurements: (1) human-written text in each non-Latin language (LCB's requests written in
it, FLORES-200 dev from ../shared/data/flores200-dev-15 where present): the share of texts a strict gate could
not write (they hold a Latin letter) and the Latin share of their letters; (2) the model's unsteered answers to
LCB's cross-lingual okapi test requests (``--requests`` per language, one answer each, seed 1) ungated, gated
strict and gated with Latin allowed: LCB's line-level pass rate, the NLL of the answers under the model and the
relevance proxy (the ``sweep --lcb`` measures).
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import publish, table  # noqa: E402

from tl_langneurons.evaluate.confusion import LANGUAGE_NAMES, lcb_prompts, lcb_quality  # noqa: E402
from tl_langneurons.evaluate.lcb_data import load_lcb_prompts  # noqa: E402
from tl_langneurons.steer import script_gate as sg  # noqa: E402

NON_LATIN = ("ar", "hi", "ja", "ko", "ru", "zh")
HUMAN_SETS = {"ar": "monolingual/dolly", "hi": "monolingual/dolly", "ja": "monolingual/native",
              "ko": "monolingual/native", "ru": "monolingual/dolly", "zh": "monolingual/aya"}
FLORES = Path(__file__).resolve().parents[2] / "shared" / "data" / "flores200-dev-15"


def mask_table(tokenizer) -> tuple[str, str]:
    """Seconds to build: the code-point table (once per process), the first mask (the tokenizer's classes), each
    later one; the share of the vocabulary each language keeps."""
    t0 = time.perf_counter()
    sg.code_point_classes()
    t_table = time.perf_counter() - t0
    rows, first = [], True
    for lang in LANGUAGE_NAMES:
        for latin in (False, True):
            if latin and sg.SCRIPTS[lang] == sg.LATIN:
                continue
            t0 = time.perf_counter()
            m = sg.script_mask(tokenizer, lang, latin)
            dt = time.perf_counter() - t0
            rows.append([lang, "yes" if latin else "no", f"{m.float().mean().item():.3f}", f"{int(m.sum())}",
                         f"{dt * 1000:.1f}" + (" (first: decodes the vocabulary)" if first else "")])
            first = False
    special = len(sg.special_ids(tokenizer))
    frag = sum(1 for t in tokenizer.batch_decode([[i] for i in range(len(tokenizer))]) if "\ufffd" in t)
    notes = (f"Vocabulary {len(tokenizer)} tokens; the code-point table (once per process) {t_table:.2f} s; "
             f"{special} special tokens (always allowed, in the shares), {frag} fragments (decode to U+FFFD alone).")
    return table(["language", "Latin allowed", "share kept", "tokens kept", "ms to build"], rows), notes


def latin_share(texts: list[str]) -> tuple[float, float]:
    """(share of texts holding a Latin letter, Latin letters' share of all letters)."""
    classes = sg.code_point_classes()
    with_latin = letters = latin = 0
    for t in texts:
        cls = [int(classes[ord(c)]) for c in t]
        n_latin = sum(1 for c in cls if c == sg.LATIN)
        with_latin += n_latin > 0
        latin += n_latin
        letters += sum(1 for c in cls if c)
    return with_latin / max(len(texts), 1), latin / max(letters, 1)


def human_table() -> str:
    rows = []
    for lang in NON_LATIN:
        sources = [(HUMAN_SETS[lang], [p.prompt for p in load_lcb_prompts([lang], lcb_set=HUMAN_SETS[lang])])]
        if (FLORES / f"{lang}.txt.gz").exists():
            sources.append(("FLORES-200 dev", gzip.decompress((FLORES / f"{lang}.txt.gz").read_bytes())
                            .decode("utf-8").splitlines()))
        for name, texts in sources:
            texts_latin, letters_latin = latin_share(texts)
            rows.append([lang, name, len(texts), f"{texts_latin:.3f}", f"{letters_latin:.4f}"])
    return table(["language", "human text", "texts", "share with a Latin letter", "Latin share of letters"], rows)


def answers_table(model, n: int) -> str:
    """Unsteered answers to the okapi cross-lingual test requests: none, gated strict, gated with Latin."""
    from tl_langneurons.steer.generation import generate_many, sample_nll

    prompts = lcb_prompts(model.tokenizer, NON_LATIN, 3, n)["test"]
    rows, examples = [], []
    for lang in NON_LATIN:
        for name, gate in (("none", None), ("gate, strict", sg.ScriptGate(lang)),
                           ("gate, Latin allowed", sg.ScriptGate(lang, latin=True))):
            req = [(p, 1) for p in prompts[lang]]
            t0 = time.perf_counter()
            out = generate_many(model, req, max_new_tokens=48, temperature=0.8, gates=[gate] * len(req))
            dt = time.perf_counter() - t0
            nll = sample_nll(model, out)
            got = [{"text": s.text, "tokens": s.tokens, "nll": x} for s, x in zip(out, nll)]
            q = lcb_quality(model, got, prompts[lang], lang, 1)
            mean_nll = sum(x for x in nll if x == x) / max(sum(1 for x in nll if x == x), 1)
            if name == "gate, strict":
                examples.append(f"{lang}: {out[0].text[:60]!r}")
            rows.append([lang, name, f"{q['lpr']:.2f}" if q["lcb_scored"] else "-", q["lcb_scored"], f"{mean_nll:.2f}",
                         "-" if q["relevance"] is None else f"{q['relevance']:.3f}", f"{dt:.0f}"])
    return (table(["language", "answers", "LPR", "scored", "NLL", "relevance", "seconds"], rows)
            + "\n\nThe first strict-gated answer of each language: " + "; ".join(examples))


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--evidence", action="store_true")
    ap.add_argument("--requests", type=int, default=12, help="okapi test requests per language (multiple of 3)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from tl_langneurons import load_model

    model = load_model(args.model)
    body, notes = mask_table(model.tokenizer)
    publish(f"Script gate: mask build time and vocabulary kept ({args.model})", body, notes, args.no_record)
    if args.evidence:
        body = ("Human text:\n\n" + human_table() + "\n\nThe model's unsteered answers to LCB's cross-lingual okapi "
                f"test requests ({args.requests} per language, 1 answer, seed 1, 48 tokens, T=0.8):\n\n"
                + answers_table(model, args.requests))
        publish(f"Script gate: Latin letters in non-Latin targets ({args.model})", body,
                "Strict: only the language's scripts' letters; Latin allowed: Latin letters too (code, names). LPR "
                "'-': LCB scored no answer (none has a line of 5 tokens or more).",
                args.no_record)


if __name__ == "__main__":
    main()
