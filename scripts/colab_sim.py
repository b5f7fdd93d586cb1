"""The offline Colab simulation: run chapters from their first cell as a fresh Colab runtime would.

What it builds, under ``_build/colab-sim/`` (removed and rebuilt each run):

* a virtualenv with ``--system-site-packages`` (Colab's torch, plotly, ... stand in for the
  machine's) plus Colab's ipywidgets **7.7.1**, a ``google.colab`` stub imported at start-up, and
  its own kernel spec;
* a git repository of the working tree tagged :data:`ngfkit.book.RELEASE_TAG`; git's
  ``url.<local>.insteadOf`` makes the chapter's unchanged ``pip install "ngfkit[notebooks] @
  git+https://github.com/ngfkit/ngfkit@<tag>"`` clone it;
* one HTTP server on 127.0.0.1 (a thread of this script, stopped at the end) serving
  Fashion-MNIST's four .gz files (``$NGFKIT_FASHION_MNIST_MIRROR``), the repository's files at
  the tag (``$NGFKIT_ASSETS_URL``: results/, book/) and, when this machine's ngfkit cache has
  models, the readers' cache archive (as a release asset with its ``.sha256``, the route a reader's
  Colab takes: ``$NGFKIT_RELEASE_URL``); every request is logged as
  ``mirror: GET ...``;
* no Debian folder (``NGFKIT_SYSTEM_DATA=off``), no ``NGFKIT_DATA``, an empty ngfkit cache, and
  an empty working directory as Colab's /content.

Then it checks ipywidgets 7.7.1 builds the attack explorer, runs each chapter with papermill
from its first cell, and fails unless the log shows the mirror served the data.
Usage: python scripts/colab_sim.py [--chapters intro,benchmarks]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ngfkit.version import RELEASE_TAG, REPOSITORY
from ngfkit.cache_archive import RELEASE_ASSET, cache_files, pack
from ngfkit.data.fashion_mnist import DEBIAN_DIR
from ngfkit.utils import cache_dir

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "_build" / "colab-sim"
IPYWIDGETS = "ipywidgets==7.7.1"  # what Colab ships
STUB = '"""A stand-in for Colab\'s module: its presence is what chapters test for."""\n'
#: chapter -> papermill parameters that keep it short (the defaults where none are needed)
PARAMETERS = {"intro": [], "benchmarks": []}


def log(message: str) -> None:
    print(f"colab-sim: {message}", flush=True)


class MirrorHandler(SimpleHTTPRequestHandler):
    served: list[str] = []  # every path asked for, to prove the mirror was used

    def log_message(self, format, *args):
        print(f"mirror: {format % args}", flush=True)

    def do_GET(self):
        MirrorHandler.served.append(self.path)
        super().do_GET()


def serve(folder: Path) -> tuple[ThreadingHTTPServer, threading.Thread]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(MirrorHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return httpd, thread


def run(cmd: list[str], env: dict | None = None, cwd: Path | None = None, timeout: float = 600) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, check=True, timeout=timeout)


def release_repository(target: Path) -> None:
    """A git repository of the working tree (tracked and not-ignored files), tagged RELEASE_TAG."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    git = ["git", "-c", "user.name=colab-sim", "-c", "user.email=colab-sim@localhost", "-C", str(target)]
    run([*git, "init", "-q"])
    run([*git, "add", "-A"])
    run([*git, "commit", "-q", "-m", "colab-sim snapshot"])
    run([*git, "tag", RELEASE_TAG])


def notices(notebook: Path) -> list[str]:
    """The ``ngfkit: ...`` lines a chapter printed (downloads, the cache pulled)."""
    cells = json.loads(notebook.read_text())["cells"]
    return [line for c in cells for o in c.get("outputs", []) if o.get("output_type") == "stream"
            for line in "".join(o["text"]).splitlines() if line.startswith("ngfkit:")]


def make_venv(venv: Path) -> Path:
    run([sys.executable, "-m", "venv", "--system-site-packages", venv])
    python = venv / "bin" / "python"
    # setuptools: the venv's own is older than what the machine's torch declares
    run([python, "-m", "pip", "install", "-q", IPYWIDGETS, "setuptools>=77,<81"])
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "google" / "colab").mkdir(parents=True)
    # google is a namespace shared with other distributions (protobuf, ...): extend, never shadow
    (site / "google" / "__init__.py").write_text("__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n")
    (site / "google" / "colab" / "__init__.py").write_text(STUB)
    (site / "colab_sim.pth").write_text("import google.colab\n")  # Colab's kernels start with it imported
    run([python, "-m", "ipykernel", "install", "--prefix", venv, "--name", "colab-sim",
         "--display-name", "Colab simulation"])
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", default=",".join(PARAMETERS), help="chapters to run (default: %(default)s)")
    args = parser.parse_args(argv)
    start = time.time()
    shutil.rmtree(WORK, ignore_errors=True)
    www, content, cache, out = WORK / "www", WORK / "content", WORK / "cache", WORK / "out"
    for folder in (www / "fashion-mnist", content, cache, out):
        folder.mkdir(parents=True)
    repo = www / "repo"
    release_repository(repo)
    for gz in sorted(DEBIAN_DIR.glob("*.gz")):
        shutil.copy2(gz, www / "fashion-mnist" / gz.name)
    archive = None
    if cache_files():
        (www / "release").mkdir()
        archive = pack(www / "release" / RELEASE_ASSET, cache_dir())
        (www / "release" / f"{RELEASE_ASSET}.sha256").write_text(f"{archive['sha256']}  {RELEASE_ASSET}\n")
        log(f"serving this machine's cache as the readers' archive: {len(archive['files'])} files")
    python = make_venv(WORK / "venv")
    httpd, thread = serve(www)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    env = {k: v for k, v in os.environ.items() if k not in ("NGFKIT_DATA", "PYTHONPATH")}
    env.update({
        "PATH": f"{python.parent}{os.pathsep}{env.get('PATH', '')}", "VIRTUAL_ENV": str(python.parent.parent),
        "NGFKIT_CACHE": str(cache), "NGFKIT_SYSTEM_DATA": "off",
        "NGFKIT_FASHION_MNIST_MIRROR": f"{base}/fashion-mnist/", "NGFKIT_ASSETS_URL": f"{base}/repo",
        "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"url.{repo.as_uri()}.insteadOf", "GIT_CONFIG_VALUE_0": REPOSITORY,
    })
    if archive:
        env["NGFKIT_RELEASE_URL"] = f"{base}/release"
    failed = []
    try:
        run([python, "-c", "import ipywidgets, google.colab, torch; from ngfkit.data.locations import candidate_dirs; "
             "assert ipywidgets.__version__ == '7.7.1', ipywidgets.__version__; "
             f"assert not any('{DEBIAN_DIR}' == str(d) for d in candidate_dirs('fashion-mnist', None)); "
             "print('colab-sim: ipywidgets', ipywidgets.__version__, '| google.colab stub | no Debian folder')"],
            env=env, cwd=content)
        for chapter in filter(None, args.chapters.split(",")):
            t0 = time.time()
            params = [p for name, value in PARAMETERS.get(chapter, []) for p in ("-p", name, value)]
            try:
                run([python, "-m", "papermill", "-k", "colab-sim", "--cwd", content, "--log-level", "WARNING",
                     "--log-output", ROOT / "book" / f"{chapter}.ipynb", out / f"{chapter}.ipynb", *params],
                    env=env, cwd=content, timeout=900)
                log(f"{chapter}: ran top to bottom in {time.time() - t0:.0f} s; its ngfkit notices:")
                for line in notices(out / f"{chapter}.ipynb"):
                    print(f"    {line}", flush=True)
            except subprocess.CalledProcessError:
                failed.append(chapter)
                log(f"{chapter}: FAILED after {time.time() - t0:.0f} s (output notebook: {out / chapter}.ipynb)")
        # the explorer on Colab's ipywidgets (no chapter above draws it): 7.x has no Stack
        run([python, "-c", "import torch, ipywidgets; from ngfkit.attacks import create_attack; "
             "from ngfkit.viz.explorer import attack_explorer; "
             "attacks = {n: create_attack(n, (1, 28, 28), 10) for n in ('badnets', 'blend')}; "
             "box = attack_explorer(attacks, torch.rand(20, 1, 28, 28), torch.arange(20) % 10); "
             "box.menu.index = 1; stack = box.children[1]; "
             "assert [c.layout.display for c in stack.children] == ['none', None], 'fallback stack'; "
             "print('colab-sim: attack explorer built and switched on ipywidgets', ipywidgets.__version__)"],
            env=env, cwd=content)
        installed = subprocess.run([python, "-c", "import ngfkit; print(ngfkit.__file__)"], env=env, cwd=content,
                                   capture_output=True, text=True).stdout.strip()
        if not installed.startswith(str(WORK / "venv")):
            failed.append(f"ngfkit imported from {installed}, not from the virtualenv")
        data = [p for p in MirrorHandler.served if p.startswith("/fashion-mnist/")]
        if not data:
            failed.append("the Fashion-MNIST mirror was never asked for a file")
        log(f"the mirror served {len(MirrorHandler.served)} requests, {len(data)} of them Fashion-MNIST files")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
    log(f"done in {time.time() - start:.0f} s")
    if failed:
        log(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
