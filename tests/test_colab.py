"""What a chapter needs in a fresh Colab runtime: the pinned install cell, files fetched from the
release tag, Fashion-MNIST downloaded (from a mirror) when no local folder has it, and the readers'
cache pulled. Every download comes from a local HTTP server on 127.0.0.1."""
from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from http_helpers import local_file_server

import ngfkit.book as book
from ngfkit.cache_archive import pack
from ngfkit.data import load_dataset
from ngfkit.data.fashion_mnist import DEBIAN_DIR, MIRROR_ENV
from ngfkit.data.locations import SYSTEM_DATA_ENV, candidate_dirs, download_by_default
from ngfkit.errors import NgfkitError
from ngfkit.version import __version__

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(tmp_path):
    """A file server for tmp_path/www on 127.0.0.1, stopped after the test."""
    www = tmp_path / "www"
    with local_file_server(www) as url:
        yield www, url


@pytest.fixture
def fresh_machine(tmp_path, monkeypatch):
    """No NGFKIT_DATA, no system folder, an empty cache; downloads back off afterwards."""
    monkeypatch.delenv("NGFKIT_DATA", raising=False)
    monkeypatch.setenv(SYSTEM_DATA_ENV, "off")
    monkeypatch.setenv("NGFKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    download_by_default(False)


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    path.write_bytes(gzip.compress(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
                                   + array.tobytes()))


def test_every_chapter_installs_this_release():
    assert book.RELEASE_TAG == f"v{__version__}"
    assert f'"ngfkit[notebooks] @ git+{book.REPOSITORY}@v{__version__}"' in book.install_command()
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "colab_cells.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_system_folders_can_be_hidden(monkeypatch):
    monkeypatch.delenv(SYSTEM_DATA_ENV, raising=False)
    assert DEBIAN_DIR in candidate_dirs("fashion-mnist", None)
    monkeypatch.setenv(SYSTEM_DATA_ENV, "off")
    assert DEBIAN_DIR not in candidate_dirs("fashion-mnist", None)


def test_notebooks_download_missing_data_from_the_mirror(fresh_machine, server, monkeypatch, capsys):
    www, base = server
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 4)):
        write_idx(www / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 2051)
        write_idx(www / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8), 2049)
    monkeypatch.setenv(MIRROR_ENV, base + "/")
    with pytest.raises(NgfkitError, match=r"data_root=DIR.*download=True") as err:
        load_dataset("fashion-mnist", "train")  # the API and CLI still ask
    assert "\n" not in str(err.value)
    book.setup_notebook("cpu")  # a notebook allows the download
    train = load_dataset("fashion-mnist", "train")
    out = capsys.readouterr().out
    assert len(train) == 12
    assert "is not on this machine" in out and "as notebooks do by default" in out
    assert f"downloading {base}/train-images-idx3-ubyte.gz" in out
    assert len(load_dataset("fashion-mnist", "test")) == 4  # found in the download cache now


def test_assets_and_reports_come_from_the_release(fresh_machine, server, monkeypatch):
    www, base = server
    (www / "book" / "jobs").mkdir(parents=True)
    (www / "book" / "jobs" / "purify_job.ipynb").write_text("{}")
    (www / "results").mkdir()
    (www / "results" / "r.json").write_text('{"ok": 1}')
    monkeypatch.delenv(book.ASSETS_ENV, raising=False)
    assert book.assets_url().endswith(f"/ngfkit/{book.RELEASE_TAG}")
    monkeypatch.setenv(book.ASSETS_ENV, base)
    assert book.fetch_assets("jobs/purify_job.ipynb") == [Path("jobs/purify_job.ipynb")]
    assert Path("jobs/purify_job.ipynb").read_text() == "{}"
    monkeypatch.setattr(book, "in_colab", lambda: True)
    assert json.loads(book.results_file("r.json").read_text()) == {"ok": 1}
    with pytest.raises(NgfkitError, match="downloading .*missing.svg failed"):
        book.fetch_assets("images/missing.svg")


def test_the_readers_cache_is_pulled_once(fresh_machine, server, monkeypatch, tmp_path, capsys):
    from ngfkit.cache_archive import RELEASE_ASSET, RELEASE_ENV

    www, base = server
    source = tmp_path / "source"
    (source / "models").mkdir(parents=True)
    (source / "models" / "m.json").write_text("{}")
    monkeypatch.setenv(RELEASE_ENV, f"{base}/release")
    monkeypatch.delenv(book.CACHE_ARCHIVE_ENV, raising=False)
    (www / "release").mkdir(parents=True)
    assert book.pull_reader_cache() == []  # the release has no archive: a notice, then training
    assert "has no readers' cache archive" in capsys.readouterr().out
    digest = pack(www / "release" / RELEASE_ASSET, source)["sha256"]
    (www / "release" / f"{RELEASE_ASSET}.sha256").write_text(f"{digest}  {RELEASE_ASSET}\n")
    assert [p.name for p in book.pull_reader_cache()] == ["m.json"]
    assert book.pull_reader_cache() == []  # remembered
    other = tmp_path / "other.tar.gz"
    (source / "models" / "n.json").write_text("{}")
    monkeypatch.setenv(book.CACHE_ARCHIVE_ENV, f"{other.as_uri()} {pack(other, source)['sha256']}")
    assert sorted(p.name for p in book.pull_reader_cache()) == ["m.json", "n.json"]  # a named archive wins
    monkeypatch.setenv(book.CACHE_ARCHIVE_ENV, "just-a-url")
    with pytest.raises(NgfkitError, match="URL SHA256"):
        book.pull_reader_cache()


def test_glued_findings_are_printed_outside_the_built_book(monkeypatch, capsys):
    monkeypatch.delenv(book.BUILD_ENV, raising=False)
    book.glue("asr_after", "0.0")
    assert "asr_after: 0.0" in capsys.readouterr().out
    monkeypatch.setenv(book.BUILD_ENV, "1")  # what the Sphinx extension sets for the build's kernels
    book.glue("asr_after", "0.0")
    assert "asr_after" not in capsys.readouterr().out


def test_the_sphinx_extension_marks_the_build(monkeypatch, tmp_path):
    class App:
        confdir = str(tmp_path)

        def add_js_file(self, name):
            pass

        def connect(self, event, handler):
            pass

    monkeypatch.delenv(book.BUILD_ENV, raising=False)
    book.setup(App())
    import os
    assert os.environ[book.BUILD_ENV] == "1"
