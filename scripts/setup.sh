#!/usr/bin/env bash
# Install ngfkit and everything its tests and book need on a Debian machine (run as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
# the embedded dataset, and headless Chromium for the book's browser check
if [ ! -d /usr/share/datasets/fashion-mnist ] || ! command -v chromium >/dev/null 2>&1; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q dataset-fashion-mnist chromium
fi
python3 -m pip install -q -r requirements.txt
python3 -m pip install -q -e ".[test,book]"
# the ipywidgets HTML manager and MathJax, so the built book renders widgets and formulas without a CDN
python3 scripts/fetch_book_assets.py || echo "warning: the built book will load what could not be fetched from a CDN"
# pyenv installs need their shims refreshed before the new `ngfkit` command is on PATH
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
