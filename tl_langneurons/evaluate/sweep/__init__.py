"""Find steering settings that give fluent text in the target language (beyond the paper's protocol).

A staged search per language, on validation seeds from BOS or on validation prompts (``heldout``: the
first tokens of held-out sentences of the other languages, continued while steering). For clamp: k
(as a fraction of the site's neurons), then the clamp scale, then the positions, then the layer
subset (then, with ``neuron_sets``, top against both); for add: k, alpha, layer subset (the same);
for diffmean: layer, alpha; for sparse: layer, K, coef. On
prompts, optionally a first stage that takes each prompt's language as the source (``sources``); for
add, diffmean and sparse, a positions stage (``all`` against ``generated``: from BOS, generated leaves
the BOS position alone). Then, each only where asked for: the k neurons spread over the layers (``spreads``),
alpha per layer band (``band_alphas``), a diffmean term on add (``resid_alphas``, with ``keep_norm_stage`` also
norm-preserving), norm preservation for diffmean (``keep_norm_stage``), steering only the first N tokens
(``steer_tokens``), and a two-phase strength (``after_scales``: the first N tokens at full strength, the rest at a
share of it). Each stage keeps
the best setting so far by the gated rate (target language and not degenerate; ties broken by lower
NLL). The best setting of each language, and one shared setting for all, are then reported on fresh
seeds (or fresh prompts), beside the paper's setting.

The package, one module a job: :mod:`.config` (:class:`SweepConfig` and its checks), :mod:`.space` (the search
space from the interventions' axes), :mod:`.prompts` (what the settings are scored on), :mod:`.rows` (the typed
rows), :mod:`.scoring` (candidates into scored rows), :mod:`.search` (the per-language search and its picks),
:mod:`.shared` (the shared setting and ``--shared-search``), :mod:`.testsplit` (the test split), :mod:`.writer`
(``sweep.md``, ``sweep.json``, the figures), :mod:`.results` (a sweep read back) and :mod:`.run`
(:func:`run_sweep`).
"""

from __future__ import annotations

from .config import SHARED_PICKS, SweepConfig, check_sweep, keeps_floor, sweep_folder
from .prompts import Genres, SweepPrompts, check_prompt_texts, heldout_genres, sweep_prompts
from .results import SweepResult, sweep_settings
from .rows import SHARED_SCORES, Candidate, Pick, Scored, SharedOption, SharedPick
from .run import run_sweep
from .scoring import GENRE_MEASURES, Scorer
from .search import Search, SearchResult
from .shared import SharedSearch
from .space import AXES, _later_stages, _search_space, _shared_stages, _with
from .testsplit import SplitReport, own_fluency
from .writer import _genre_language_lines, _shared_line, sweep_markdown, write_sweep

__all__ = ["AXES", "GENRE_MEASURES", "SHARED_PICKS", "SHARED_SCORES", "Candidate", "Genres", "Pick", "Scored",
           "Scorer", "Search", "SearchResult", "SharedOption", "SharedPick", "SharedSearch", "SplitReport",
           "SweepConfig", "SweepPrompts", "SweepResult", "check_prompt_texts", "check_sweep", "heldout_genres",
           "keeps_floor", "own_fluency", "run_sweep", "sweep_folder", "sweep_markdown", "sweep_prompts",
           "sweep_settings", "write_sweep"]
