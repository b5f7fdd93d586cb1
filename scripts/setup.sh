#!/usr/bin/env bash
# Install ngfkit and everything its tests and book need on a Debian machine (run as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q dataset-fashion-mnist
fi
python3 -m pip install -q -r requirements.txt
python3 -m pip install -q -e ".[test,book]"
# pyenv installs need their shims refreshed before the new `ngfkit` command is on PATH
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
