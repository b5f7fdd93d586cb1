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
# the ipywidgets HTML manager, so the built book renders widgets without a CDN (optional)
python3 scripts/fetch_widget_manager.py || echo "warning: the built book will load ipywidgets' manager from a CDN"
# pyenv installs need their shims refreshed before the new `ngfkit` command is on PATH
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
