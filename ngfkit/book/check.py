"""Check the built book in headless Chromium: every chapter page loads, every plotly figure is
drawn, every embedded widget renders, formulas are typeset, every glued number is substituted, no
cell shows a traceback, and every local link resolves.
A screenshot of each chapter goes to ``<build>/screenshots/`` (CI keeps them as artifacts).

Usage: python -m ngfkit.book.check [_build/html] [--toc _toc.yml] [--browser chromium]
Exit status 1 with one line per problem when any check fails.
"""
from __future__ import annotations

import argparse
import html.parser
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml


def chapter_pages(toc: Path) -> list[str]:
    """Document names in ``_toc.yml`` order (root first), e.g. ``book/attacks``."""
    data = yaml.safe_load(toc.read_text())
    names = [data["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                names.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in data.get("parts", []):
        walk(part.get("chapters"))
    walk(data.get("chapters"))
    return [re.sub(r"\.(md|ipynb)$", "", n) for n in names]


class PageScan(html.parser.HTMLParser):
    """Counts plotly containers and drawn plots, widget views and rendered widgets; collects links."""

    def __init__(self):
        super().__init__()
        self.plotly_divs = self.drawn_plots = self.widget_views = self.rendered_widgets = 0
        self.links: list[str] = []
        self.title = ""
        self._in_title = False
        self._script_type = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "div" and "plotly-graph-div" in classes:
            self.plotly_divs += 1
            self.drawn_plots += "js-plotly-plot" in classes  # plotly.js adds this class once it has drawn
        if tag == "script":
            self._script_type = attrs.get("type")
            if self._script_type == "application/vnd.jupyter.widget-view+json":
                self.widget_views += 1
        if tag == "div" and "jupyter-widgets" in classes and {"widget-inline-hbox", "widget-container"} & set(classes):
            self.rendered_widgets += 1
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def dump_dom(browser: str, page: Path, screenshot: Path) -> str:
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--virtual-time-budget=15000"]
    subprocess.run(common + [f"--screenshot={screenshot}", "--window-size=1280,2400", page.as_uri()],
                   capture_output=True, timeout=180, check=False)
    return subprocess.run(common + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                          timeout=180, check=False).stdout


def check_page(name: str, html_root: Path, browser: str, shots: Path) -> tuple[list[str], dict]:
    page = (html_root / f"{name}.html").resolve()
    if not page.is_file():
        return [f"{name}: {page} was not built"], {}
    dom = dump_dom(browser, page, shots / f"{name.replace('/', '_')}.png")
    scan = PageScan()
    scan.feed(dom)
    problems = []
    if not scan.title.strip():
        problems.append(f"{name}: the page did not load in {browser} (no <title> in the DOM)")
    if scan.drawn_plots < scan.plotly_divs:
        problems.append(f"{name}: {scan.plotly_divs} plotly figures but only {scan.drawn_plots} drawn")
    # pages with embedded widget views must show rendered widgets (the HTML manager ran)
    if scan.widget_views and not scan.rendered_widgets:
        problems.append(f"{name}: {scan.widget_views} embedded widgets, none rendered")
    if 'class="math notranslate' in dom and "<mjx-container" not in dom:
        problems.append(f"{name}: the page has formulas but MathJax typeset none")
    if "{glue:" in dom:  # a glue role MyST left as text (inside inline code, or a typo)
        problems.append(f"{name}: the prose shows a raw {{glue:...}} role instead of its value")
    if "Traceback (most recent call last)" in dom or re.search(r'class="[^"]*\bcell_output\b[^"]*"[^>]*>\s*'
                                                                r'<div[^>]*class="[^"]*\berror\b', dom):
        problems.append(f"{name}: a cell shows a traceback")
    for href in scan.links:
        parts = urlsplit(href)
        if parts.scheme or parts.netloc or not parts.path:
            continue  # external links and in-page anchors
        target = (page.parent / unquote(parts.path)).resolve()
        if not target.exists():
            problems.append(f"{name}: link {href!r} points to a missing file")
    stats = {"figures": scan.plotly_divs, "drawn": scan.drawn_plots, "widgets": scan.widget_views,
             "rendered_widgets": scan.rendered_widgets, "links": len(scan.links)}
    return problems, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", nargs="?", default="_build/html", type=Path)
    parser.add_argument("--toc", default="_toc.yml", type=Path)
    parser.add_argument("--browser", default="chromium")
    args = parser.parse_args()
    browser = shutil.which(args.browser)
    if browser is None:
        print(f"error: {args.browser} not found; install it (apt-get install chromium) or pass --browser",
              file=sys.stderr)
        return 2
    if not args.html.is_dir():
        print(f"error: {args.html} does not exist; build the book first (jupyter-book build .)", file=sys.stderr)
        return 2
    shots = args.html.parent / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    problems = []
    for name in chapter_pages(args.toc):
        page_problems, stats = check_page(name, args.html, browser, shots)
        problems += page_problems
        print(f"{name}: {'ok' if not page_problems else 'FAILED'} {stats}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"screenshots in {shots}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
