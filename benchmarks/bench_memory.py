"""Memory of `find` on Gemma-3-270M: peak RSS after loading and after finding, against the size of the pooled
matrix plus the model, one fresh process per backend, here and (with --baseline) in another checkout, side by
side in one run. Where both checkouts ran the same backend, the table says whether their logits (a padded batch)
and the find's AP and sets are identical.

    python benchmarks/bench_memory.py [--texts 320] [--k 1000] [--backends auto,hooked] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import peak_rss_gib, publish, table  # noqa: E402

LOGIT_TEXTS = ["Der Hund schläft im Garten.", "The cat", "Le chat dort sur le canapé depuis ce matin.", "猫"]


def rss_now() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def measure(args, dump: Path) -> dict:
    """One process's run: RSS and peak RSS (GiB) at each point, the load time, the model's parameters (their
    bytes, and the bytes of the distinct storages behind them); logits, AP and sets written to ``dump``."""
    import numpy as np
    import torch

    import tl_langneurons as tln
    from tl_langneurons.model.driver import Runner

    out = {"imports": [rss_now(), peak_rss_gib()]}
    t0 = time.perf_counter()
    model = tln.load_model(args.model, backend=args.backend)
    out["load_s"] = time.perf_counter() - t0
    out["load"] = [rss_now(), peak_rss_gib()]
    params = list(getattr(model, "original_model", model).parameters())
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in params}
    out.update(cls=type(model).__name__, n_params=sum(p.numel() for p in params),
               param_gib=sum(p.numel() * p.element_size() for p in params) / 2**30,
               storage_gib=sum(storages.values()) / 2**30)
    corpus = tln.MultilingualCorpus.load(args.corpus, args.texts, 0)
    neurons, pooled, _ = tln.find_neurons(model, corpus, sites=args.sites, k=args.k, progress=False,
                                          return_activations=True)
    out["find"] = [rss_now(), peak_rss_gib()]
    t = neurons.meta["timings"]
    out.update(collect=t["peak_rss_gb_after_collect"], rank=t["peak_rss_gb_after_rank"], n_texts=len(corpus),
               matrix_gib=pooled.values.numel() * 4 / 2**30, n_neurons=neurons.index.n_neurons)
    runner = Runner(model)
    enc = runner.tokenizer(LOGIT_TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(enc["input_ids"], attention_mask=enc["attention_mask"])
    sets = {f"{lang}/{which}": neurons.sets[lang][which].neurons.numpy() for lang in neurons.languages
            for which in ("top", "bottom")}
    np.savez(dump, logits=logits.float().numpy(), ap=neurons.ap.numpy(), **sets)
    return out


def child(tree: Path, args, dump: Path) -> dict:
    """``measure`` in a fresh process with ``tree`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(dump), "--model", args.model, "--corpus",
           args.corpus, "--texts", str(args.texts), "--sites", args.sites, "--k", args.k, "--backend", args.backend]
    p = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"{tree} backend {args.backend} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def identical(a: Path, b: Path) -> str:
    """Whether two runs' logits, AP and sets are bit-identical."""
    import numpy as np

    x, y = np.load(a), np.load(b)
    same = {k: x[k].shape == y[k].shape and (x[k] == y[k]).all() for k in x.files}
    if all(same.values()):
        return "yes"
    bad = [k for k, v in same.items() if not v]
    return f"no ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--corpus", default="bundled")
    ap.add_argument("--texts", type=int, default=320, help="texts per language")
    ap.add_argument("--sites", default="mlp_post")
    ap.add_argument("--backends", default="auto", help="comma-separated: auto (the bridge), hooked (a "
                    "HookedTransformer: transformer-lens 3.x), bridge, hf; one fresh process each")
    ap.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--k", default="1000")
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout, run side by side")
    ap.add_argument("--no-record", action="store_true", help="print the table instead of appending it to RESULTS.md")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args, args.child)))
        return
    if args.baseline is not None and not (args.baseline / "tl_langneurons").is_dir():
        ap.error(f"--baseline {args.baseline}: not a checkout of tl-langneurons (no tl_langneurons/ in it)")
    trees = ([("baseline", args.baseline)] if args.baseline else []) + [("this checkout", HERE.parent)]
    runs, dumps = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            for label, tree in trees:
                args.backend = backend
                dumps[label, backend] = Path(tmp) / f"{len(dumps)}.npz"
                runs.append((label, backend, child(tree, args, dumps[label, backend])))
        same = {b: identical(dumps["baseline", b], dumps["this checkout", b]) for b in args.backends.split(",")
                if ("baseline", b) in dumps}
    ref = next((r["find"][1] for label, b, r in runs if b in ("auto", "bridge") and label == "this checkout"), None)
    rows = [[label, backend, r["cls"], f"{r['load_s']:.1f}", f"{r['load'][0]:.2f}", f"{r['load'][1]:.2f}",
             f"{r['collect']:.2f}", f"{r['find'][1]:.2f}", f"{r['find'][1] / ref:.2f}" if ref else "",
             f"{r['param_gib']:.2f} / {r['storage_gib']:.2f}", same.get(backend, "")] for label, backend, r in runs]
    r0 = runs[-1][2]
    base = ""
    if args.baseline:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=args.baseline).stdout.strip()
        base = f"Baseline: commit {commit or '?'} ({args.baseline}). "
    publish(f"Memory of find ({args.sites}, {r0['n_texts']} texts, k {args.k}, backends {args.backends})",
           table(["checkout", "backend", "model", "load s", "RSS after load", "peak after load", "peak collect",
                  "peak after find", "peak / bridge's", "parameters / their storages GiB", "identical to baseline"],
                 rows),
           f"{base}RSS and peaks in GiB, each run a fresh process (imports alone about {r0['imports'][0]:.2f} GiB). "
           f"Pooled matrix {r0['n_texts']} x {r0['n_neurons']} = {r0['matrix_gib']:.2f} GiB. 'parameters / their "
           "storages': the bytes of the model's parameters, and of the distinct storages behind them (a parameter "
           "that is a view of another's storage counts once). 'identical': the logits of a padded batch of 4 texts, "
           "the find's AP and every language's top and bottom set, bit for bit.", args.no_record, heading=True)


if __name__ == "__main__":
    main()
