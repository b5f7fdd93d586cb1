"""Fetch the ipywidgets HTML manager from the npm registry into _static/html-manager/.

The built book then renders embedded widget state without a CDN (jupyter-book loads every
``.js`` under ``_static``; ``ngfkit.book`` switches myst-nb's CDN scripts off when this file
exists). The tarball is checked against the registry's sha512 integrity before extraction.
Usage: python scripts/fetch_widget_manager.py [--version 1.0.15]
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

REGISTRY = "https://registry.npmjs.org/@jupyter-widgets/html-manager"
ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "_static" / "html-manager"
KEEP_SUFFIXES = (".js", ".txt", ".woff", ".woff2", ".ttf", ".eot", ".svg")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="1.0.15", help="html-manager version (1.x serves ipywidgets 8)")
    args = parser.parse_args()
    if (TARGET / "embed.js").is_file() and (TARGET / "VERSION").read_text().strip() == args.version:
        print(f"{TARGET / 'embed.js'} is already version {args.version}")
        return 0
    try:
        with urllib.request.urlopen(f"{REGISTRY}/{args.version}", timeout=60) as response:
            dist = json.load(response)["dist"]
        with urllib.request.urlopen(dist["tarball"], timeout=120) as response:
            blob = response.read()
    except OSError as error:
        print(f"error: cannot reach the npm registry ({error}); the book will load widgets from a CDN instead",
              file=sys.stderr)
        return 1
    algorithm, expected = dist["integrity"].split("-", 1)
    if algorithm != "sha512" or base64.b64encode(hashlib.sha512(blob).digest()).decode() != expected:
        print("error: the downloaded html-manager tarball does not match the registry's sha512; not installed",
              file=sys.stderr)
        return 1
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=TARGET.parent))  # same filesystem: the final rename is atomic
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = Path(member.name)
            # embed.js only (the AMD variants need require.js and a CDN); fonts for its icons
            if member.isfile() and name.parent == Path("package/dist") and name.suffix in KEEP_SUFFIXES \
                    and "amd" not in name.name:
                (staging / name.name).write_bytes(tar.extractfile(member).read())
    (staging / "VERSION").write_text(args.version + "\n")
    if TARGET.exists():
        for old in TARGET.iterdir():
            old.unlink()
        TARGET.rmdir()
    staging.rename(TARGET)
    print(f"installed @jupyter-widgets/html-manager {args.version} into {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
