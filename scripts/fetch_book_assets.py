"""Fetch the ipywidgets HTML manager and MathJax from the npm registry, so the built book
renders widgets and formulas without a CDN.

- ``@jupyter-widgets/html-manager`` → ``_static/html-manager/`` (jupyter-book loads every ``.js``
  under ``_static``; ``ngfkit.book`` then switches myst-nb's CDN scripts off);
- ``mathjax`` → ``_vendor/mathjax/`` (``ngfkit.book`` adds ``_vendor`` to the static path and
  points Sphinx's ``mathjax_path`` at it; outside ``_static`` so its many scripts are not all
  loaded on every page).

Each tarball is checked against the registry's sha512 integrity before extraction; a package
that cannot be fetched leaves the book on the CDN for it.
Usage: python scripts/fetch_book_assets.py
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
import tempfile
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
FONT_AND_SCRIPT = (".js", ".txt", ".woff", ".woff2", ".ttf", ".eot", ".svg")


@dataclass
class Package:
    name: str
    version: str
    target: Path
    entry: str  # the file whose presence means "installed"
    keep: Callable[[str], str | None]  # tarball member name -> path under target, or None to skip


def _html_manager(member: str) -> str | None:
    # embed.js only (the AMD variants need require.js and a CDN); fonts for its icons
    path = Path(member)
    if path.parent == Path("package/dist") and path.suffix in FONT_AND_SCRIPT and "amd" not in path.name:
        return path.name
    return None


def _mathjax(member: str) -> str | None:
    # the combined TeX -> CommonHTML component, its fonts, and the TeX extensions it autoloads
    if member == "package/es5/tex-chtml.js":
        return "tex-chtml.js"
    for prefix in ("package/es5/output/chtml/fonts/woff-v2/", "package/es5/input/tex/extensions/"):
        if member.startswith(prefix) and not member.endswith("/"):
            return member.removeprefix("package/es5/")
    return None


PACKAGES = [
    Package("@jupyter-widgets/html-manager", "1.0.15", ROOT / "_static" / "html-manager", "embed.js", _html_manager),
    Package("mathjax", "3.2.2", ROOT / "_vendor" / "mathjax", "tex-chtml.js", _mathjax),
]


def fetch(package: Package) -> bool:
    version_file = package.target / "VERSION"
    if (package.target / package.entry).is_file() and version_file.is_file() \
            and version_file.read_text().strip() == package.version:
        print(f"{package.name} {package.version} is already in {package.target}")
        return True
    try:
        url = f"https://registry.npmjs.org/{package.name}/{package.version}"
        with urllib.request.urlopen(url, timeout=60) as response:
            dist = json.load(response)["dist"]
        with urllib.request.urlopen(dist["tarball"], timeout=180) as response:
            blob = response.read()
    except OSError as error:
        print(f"error: cannot fetch {package.name} from the npm registry ({error}); the book will use a CDN for it",
              file=sys.stderr)
        return False
    algorithm, expected = dist["integrity"].split("-", 1)
    if algorithm != "sha512" or base64.b64encode(hashlib.sha512(blob).digest()).decode() != expected:
        print(f"error: the {package.name} tarball does not match the registry's sha512; not installed", file=sys.stderr)
        return False
    package.target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=package.target.parent))  # same filesystem: the final rename is atomic
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for member in tar.getmembers():
            relative = package.keep(member.name) if member.isfile() else None
            if relative is None or ".." in Path(relative).parts:
                continue
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(tar.extractfile(member).read())
    (staging / "VERSION").write_text(package.version + "\n")
    if package.target.exists():
        old = package.target.with_name(package.target.name + ".old")
        package.target.rename(old)
        shutil.rmtree(old)
    staging.rename(package.target)
    print(f"installed {package.name} {package.version} into {package.target}")
    return True


def main() -> int:
    results = [fetch(package) for package in PACKAGES]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
