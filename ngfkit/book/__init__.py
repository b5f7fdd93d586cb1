"""Helpers the book's chapters share: notebook set-up and the Sphinx hook that ships plotly.js.

A chapter starts with ``device = setup_notebook(device)``. Plotly figures then carry two
representations: plotly's own mime type (drawn by JupyterLab, Notebook 7 and VS Code) and a
``text/html`` div without the library, drawn in the built book by the copy of ``plotly.min.js``
that :func:`setup` (the Sphinx extension) puts into ``_static``. jupyter-book 1.x drops
plotly's mime type, so without the second representation the HTML book would show no figure;
and without a local ``plotly.min.js`` it would need the network.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch

from ..utils import resolve_device
from ..version import REPOSITORY, RELEASE_TAG

RENDERER = "ngfkit_book"
#: replaces :func:`assets_url` (a fork, or the local mirror of the offline Colab simulation)
ASSETS_ENV = "NGFKIT_ASSETS_URL"
#: ``"URL SHA256"`` of a readers' cache archive other than this release's own (a fork's, a
#: mirror's); by default the one the release workflow attached to :data:`RELEASE_TAG` is pulled
#: (:func:`ngfkit.cache_archive.release_archive`)
CACHE_ARCHIVE_ENV = "NGFKIT_CACHE_ARCHIVE"
#: set by the Sphinx extension, so that a chapter executed for the built book (whose kernels
#: inherit the build's environment) knows that its glued numbers appear in the prose
BUILD_ENV = "NGFKIT_BOOK_BUILD"


def in_colab() -> bool:
    return "google.colab" in sys.modules


def _register_renderer() -> None:
    import plotly.io as pio
    from plotly.io.base_renderers import MimetypeRenderer

    class StaticHtmlRenderer(MimetypeRenderer):
        """``text/html`` that expects ``window.Plotly`` to be loaded by the page."""

        def to_mimebundle(self, fig_dict):
            html = pio.to_html(fig_dict, include_plotlyjs=False, full_html=False, config={"responsive": True})
            return {"text/html": html}

    pio.renderers[RENDERER] = StaticHtmlRenderer()


def setup_notebook(device: str | torch.device = "auto") -> torch.device:
    """Configure a chapter's session; return the resolved device (``"auto"``: CUDA when available).

    * plotly: Colab draws with its own renderer (it loads plotly.js itself); everywhere else a
      figure carries both plotly's mime type and a library-free HTML div;
    * data: a dataset missing from every local folder is downloaded, with a printed notice
      (a reader in a notebook has no ``--download`` to pass; the CLI still asks for it);
    * in Colab, the readers' cache of trained models and learned triggers is pulled once
      (this release's asset, sha256-checked; :func:`pull_reader_cache`), so a chapter does not
      retrain them each session.
    """
    import plotly.io as pio

    from ..data.locations import download_by_default

    download_by_default(True)
    if in_colab():
        pio.renderers.default = "colab"
        pull_reader_cache()
    else:
        _register_renderer()
        pio.renderers.default = f"plotly_mimetype+{RENDERER}"
    return resolve_device(device)


def assets_url() -> str:
    """Where the repository's files at :data:`RELEASE_TAG` are downloaded from."""
    return os.environ.get(ASSETS_ENV) or f"https://raw.githubusercontent.com/ngfkit/ngfkit/{RELEASE_TAG}"


def install_command() -> str:
    """The pip command of every chapter's Colab cell: this release, with the notebooks extra."""
    return f'pip -q install "ngfkit[notebooks] @ git+{REPOSITORY}@{RELEASE_TAG}"'


def _download(url: str, target: Path) -> Path:
    import urllib.error
    import urllib.request

    from ..errors import NgfkitError
    from ..utils import atomic_path

    print(f"ngfkit: downloading {url}", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_path(target) as tmp:
            tmp.write_bytes(response.read())
    except (urllib.error.URLError, OSError) as exc:
        raise NgfkitError(f"downloading {url} failed ({type(exc).__name__}: {getattr(exc, 'reason', exc)}); "
                          f"check the network connection, or copy the file to {target} yourself") from None
    return target


def fetch_assets(*paths: str) -> list[Path]:
    """The chapter's own files (paths relative to ``book/``, e.g. ``"jobs/purify_job.ipynb"``):
    each one missing from the working directory is downloaded there from :data:`RELEASE_TAG`
    (Colab opens a chapter without the repository around it)."""
    found = []
    for path in paths:
        target = Path(path)
        found.append(target if target.is_file() else _download(f"{assets_url()}/book/{path}", target))
    return found


def pull_reader_cache() -> list[Path]:
    """Pull the readers' cache archive into the ngfkit cache, once per archive (a marker file
    remembers it): ``$NGFKIT_CACHE_ARCHIVE`` (``"URL SHA256"``) when set, else the archive of
    :data:`RELEASE_TAG`. A release without one gets a notice, and the chapter trains what it needs."""
    from ..cache_archive import pull, release_archive
    from ..errors import NgfkitError
    from ..utils import cache_dir

    spec = os.environ.get(CACHE_ARCHIVE_ENV, "").split()
    if spec and len(spec) != 2:
        raise NgfkitError(f"${CACHE_ARCHIVE_ENV} must be 'URL SHA256' (two words), not {' '.join(spec)!r}")
    found = tuple(spec) if spec else release_archive()
    if found is None:
        print(f"ngfkit: release {RELEASE_TAG} has no readers' cache archive; the models and triggers this "
              "chapter needs are trained now (a GPU runtime makes that much faster)", flush=True)
        return []
    url, sha256 = found
    marker = cache_dir() / f".pulled-{sha256.lower()[:16]}"
    if marker.is_file():
        return []
    paths = pull(url, sha256, progress=True)
    marker.write_text(url + "\n")
    return paths


class _MimeBundle:
    """An object IPython (and so ``myst_nb.glue``) displays as a fixed mime bundle."""

    def __init__(self, bundle: dict):
        self.bundle = bundle

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.bundle

    def __repr__(self) -> str:
        return "<plotly figure>"


def figure_bundle(fig) -> dict:
    """The mime bundle of a plotly figure under the active renderers (see :func:`setup_notebook`)."""
    import plotly.io as pio

    fig_dict = fig.to_dict() if hasattr(fig, "to_dict") else fig
    bundle: dict = {}
    for name in (pio.renderers.default or "plotly_mimetype").split("+"):
        renderer = pio.renderers[name]
        if hasattr(renderer, "to_mimebundle"):
            bundle.update(renderer.to_mimebundle(fig_dict))
    return bundle


def glue(name: str, value, display: bool = False) -> None:
    """``myst_nb.glue`` for a number or word that the prose quotes (``{glue:text}`name```).

    Only the built book replaces those placeholders; run anywhere else (Colab, Jupyter,
    papermill), the chapter also prints ``name: value`` in the cell's output, so a reader sees
    the finding that the prose below it quotes.
    """
    from myst_nb import glue as myst_glue

    myst_glue(name, value, display=display)
    if not display and not os.environ.get(BUILD_ENV):
        print(f"{name}: {value}")


def glue_figure(name: str, fig, display: bool = True) -> None:
    """``myst_nb.glue`` for a plotly figure, so a ``{glue:figure}`` directive can caption it.

    Plotly figures display themselves rather than returning a mime bundle, which leaves
    ``glue`` with nothing to store; this hands it the bundle explicitly.
    """
    from myst_nb import glue

    glue(name, _MimeBundle(figure_bundle(fig)), display=display)


def results_file(name: str, results_dir: str | Path | None = None) -> Path:
    """A report shipped in the repository's ``results/``: from ``results_dir`` when given, else
    next to the working directory or the package checkout; in Colab (installed without the
    repository) it is downloaded from :data:`RELEASE_TAG` into ``./results``."""
    from ..errors import NgfkitError

    candidates = [Path(results_dir) / name] if results_dir else []
    candidates += [Path("results") / name, Path("..") / "results" / name,
                   Path(__file__).resolve().parent.parent / "results" / name]
    for path in candidates:
        if path.is_file():
            return path
    if in_colab():
        return _download(f"{assets_url()}/results/{name}", Path("results") / name)
    raise NgfkitError(f"report {name!r} not found in {', '.join(str(p.parent) for p in candidates)}; "
                      f"run from a clone of the repository or pass results_dir")


def plotly_js_path() -> Path:
    """The ``plotly.min.js`` bundled with the installed plotly package."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall plotly (pip install --force-reinstall plotly)")
    return path


def local_widget_manager(confdir: str | Path) -> Path:
    """Where ``scripts/fetch_book_assets.py`` puts the ipywidgets HTML manager."""
    return Path(confdir) / "_static" / "html-manager" / "embed.js"


def local_mathjax(confdir: str | Path) -> Path:
    """Where ``scripts/fetch_book_assets.py`` puts MathJax (outside ``_static``, see there)."""
    return Path(confdir) / "_vendor" / "mathjax" / "tex-chtml.js"


def setup(app):
    """Sphinx extension (``sphinx: extra_extensions: [ngfkit.book]``).

    Loads plotly.js from ``_static`` on every page, copied from the installed plotly package
    after the build. When the ipywidgets HTML manager was fetched into ``_static`` (jupyter-book
    then loads it on every page), myst-nb's CDN copies of require.js and the manager are
    switched off, so embedded widget state renders offline. Likewise a fetched MathJax
    replaces the CDN one.
    """
    app.add_js_file("plotly.min.js")
    os.environ[BUILD_ENV] = "1"

    def use_local_assets(app, config):
        if local_widget_manager(app.confdir).is_file():
            config.nb_ipywidgets_js = {}
        if local_mathjax(app.confdir).is_file():
            config.html_static_path = [*config.html_static_path, "_vendor"]
            config.mathjax_path = "mathjax/tex-chtml.js"

    app.connect("config-inited", use_local_assets)

    def copy_plotly(app, exception):
        if exception is None and app.builder.format == "html":
            static = Path(app.outdir) / "_static"
            static.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(plotly_js_path(), static / "plotly.min.js")

    app.connect("build-finished", copy_plotly)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
