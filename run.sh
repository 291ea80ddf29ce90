#!/usr/bin/env bash
# Set up (or reuse) .venv and run tl-langneurons:   ./run.sh demo  |  ./run.sh test  |  ./run.sh docs  |  ./run.sh <subcommand> ...
# Torch is installed first: TL_LANGNEURONS_TORCH overrides the requirement (default torch==2.13.0,
# the CPU wheel on this kind of machine; e.g. TL_LANGNEURONS_TORCH="torch" for a CUDA build).
# TL_LANGNEURONS_VENV picks the environment (default .venv) and TL_LANGNEURONS_EXTRA adds requirements to it,
# e.g. TL_LANGNEURONS_VENV=.venv-tl3 TL_LANGNEURONS_EXTRA="transformer-lens>=3.9,<4 sae-lens" (what CI runs too).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${TL_LANGNEURONS_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
stamp="$VENV/.tl_langneurons_installed"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)-${TL_LANGNEURONS_TORCH:-torch==2.13.0}-${TL_LANGNEURONS_EXTRA:-}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV/bin/pip" install -q "${TL_LANGNEURONS_TORCH:-torch==2.13.0}"
  # shellcheck disable=SC2086  # TL_LANGNEURONS_EXTRA is a list of requirements
  "$VENV/bin/pip" install -q -e ".[test]" ${TL_LANGNEURONS_EXTRA:-}
  echo "$want" > "$stamp"
fi
cmd="${1:-demo}"; shift || true
case "$cmd" in
  # two workers on the two cores, a file per worker at a time (its fixtures built once); TL_LANGNEURONS_TEST_WORKERS=0: one process
  test) exec "$VENV/bin/python" -m pytest -q -n "${TL_LANGNEURONS_TEST_WORKERS:-2}" --dist loadfile "$@" ;;
  # the documentation site into docs/_build/html (offline; warnings are errors; the tutorial notebook is executed),
  # then its internal links checked; the docs extra is installed into the same environment on first use
  docs)
    docs_stamp="$VENV/.tl_langneurons_docs"
    if [ ! -f "$docs_stamp" ] || [ "$(cat "$docs_stamp")" != "$want" ]; then
      # shellcheck disable=SC2086
      "$VENV/bin/pip" install -q -e ".[test,docs]" ${TL_LANGNEURONS_EXTRA:-}
      echo "$want" > "$docs_stamp"
    fi
    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false "$VENV/bin/python" -m sphinx -E -W --keep-going -q -b html \
      docs docs/_build/html "$@"
    exec "$VENV/bin/python" docs/check_links.py docs/_build/html ;;
  *) exec "$VENV/bin/tl-langneurons" "$cmd" "$@" ;;
esac
