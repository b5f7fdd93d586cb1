"""The built-book checker's parsing, on hand-written DOM snippets (no browser needed)."""
from ngfkit.book.check import PageScan, chapter_pages


def scan(dom: str) -> PageScan:
    page = PageScan()
    page.feed(dom)
    return page


def test_counts_drawn_and_undrawn_plotly_figures():
    page = scan('<title>x</title><div class="plotly-graph-div js-plotly-plot"></div><div class="plotly-graph-div"></div>')
    assert (page.plotly_divs, page.drawn_plots, page.title) == (2, 1, "x")


def test_counts_widget_views_and_rendered_widgets():
    page = scan('<script type="application/vnd.jupyter.widget-view+json">{}</script>'
                '<div class="jupyter-widgets widget-inline-hbox widget-slider"></div><a href="b.html#x">b</a>')
    assert (page.widget_views, page.rendered_widgets, page.links) == (1, 1, ["b.html#x"])


def test_chapter_pages_follow_the_toc(tmp_path):
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: book/intro\nparts:\n  - caption: c\n    chapters:\n"
                   "      - file: book/a.ipynb\n      - file: book/b\n")
    assert chapter_pages(toc) == ["book/intro", "book/a", "book/b"]
