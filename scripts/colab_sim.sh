#!/usr/bin/env bash
# The offline Colab simulation (see scripts/colab_sim.py): a fresh virtualenv with Colab's
# ipywidgets 7.7.1 and a google.colab stub, no Debian dataset, Fashion-MNIST and the book's files
# from a local HTTP mirror on 127.0.0.1; runs two chapters from their first (install) cell.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p _build
python3 scripts/colab_sim.py "$@" 2>&1 | tee _build/colab-sim.log
