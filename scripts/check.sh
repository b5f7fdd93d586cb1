#!/usr/bin/env bash
# The whole test suite (the README's test command; CI runs it after scripts/setup.sh):
#   1. unit tests,
#   2. every notebook under book/ executed by nbval (a failing cell fails the run),
#   3. the offline Colab simulation (scripts/colab_sim.py: two chapters from their install cell in a
#      fresh virtualenv with ipywidgets 7.7.1, data and files from a local mirror on 127.0.0.1),
#      then one chapter run by papermill with non-default parameters,
#   4. the book built by jupyter-book with warnings as errors (it re-executes the chapters,
#      but the trained models and learned triggers come from the ngfkit cache filled in step 2),
#   5. the built HTML checked in headless Chromium (screenshots under _build/screenshots/).
# `bash scripts/check.sh unit` runs step 1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo; echo "== $1 (at $(( $(date +%s) - start )) s)"; }

step "GitHub workflow files against their schema (1 s)"
check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

step "README result tables against results/*.json (about 10 s)"
python scripts/readme_tables.py --check

step "unit tests"
python -m pytest -q -n 2
if [ "${1:-all}" = "unit" ]; then exit 0; fi

step "book notebooks (nbval)"
python -m pytest -q --nbval-lax book/

step "offline Colab simulation: intro and benchmarks from their install cell (about 5 min)"
bash scripts/colab_sim.sh

step "papermill: the regulariser chapter on the Blend attack"
mkdir -p _build/papermill
papermill -k python3 --cwd book book/regulariser.ipynb _build/papermill/regulariser-blend.ipynb \
  -p attack blend --log-level WARNING

step "jupyter-book build (warnings are errors)"
jupyter-book build . -W

step "built HTML in headless Chromium"
python -m ngfkit.book.check _build/html

step "done in $(( $(date +%s) - start )) s"
