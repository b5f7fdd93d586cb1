"""A pretrained cache for readers: the trained models and learned triggers of the ngfkit cache
packed into one archive, and that archive pulled back into a reader's cache.

* :func:`pack` writes ``models/`` and ``triggers/`` of a cache (safetensors and their JSON
  sidecars, nothing else) into a gzipped tar with a ``manifest.json`` of every file's sha256
  and size. The archive is reproducible (sorted members, zeroed times and owners), so one
  cache always packs to the same sha256.
* :func:`pull` downloads an archive (``https://``, ``http://`` or ``file://``), checks its sha256
  against the one given *before* opening it, then checks every member: only
  ``models|triggers/<name>.safetensors|json`` regular files, no links, no path traversal, each
  matching the manifest (and each safetensors file's header readable). Only when everything
  checks out are the files moved into the cache, each with an atomic rename; a refused archive
  leaves the cache as it was and says why in one line.

* :func:`release_archive` names the archive published with this release: the book workflow
  packs the cache its build used and attaches it, with a ``.sha256`` file, to the release of
  the tag (``ngfkit cache pull`` with no URL, and the chapters in Colab, pull that one).

Nothing here unpickles anything: safetensors and JSON are data, which is why only they are let in.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from .errors import NgfkitError
from .utils import atomic_path, cache_dir
from .version import REPOSITORY, RELEASE_TAG, __version__

FORMAT = "ngfkit-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: the cache folders an archive carries (datasets under data/ are not ours to redistribute)
FOLDERS = ("models", "triggers")
SUFFIXES = (".safetensors", ".json")
#: an archive member other than the manifest: one cache folder, one plain file name
MEMBER = re.compile(r"^(models|triggers)/[A-Za-z0-9][A-Za-z0-9._-]*\.(safetensors|json)$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: refuse a download (or an unpacked total) larger than this: the book's cache is a few tens of MB
MAX_BYTES = 4 << 30
CHUNK = 1 << 20
#: the release asset's file name (beside it: the same name + ``.sha256``, in sha256sum's format)
RELEASE_ASSET = "ngfkit-cache.tar.gz"
#: replaces :func:`release_url` (a fork's releases, or a local mirror in tests)
RELEASE_ENV = "NGFKIT_RELEASE_URL"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_files(cache: str | Path | None = None) -> list[Path]:
    """The files :func:`pack` takes from ``cache`` (default: the ngfkit cache), as paths relative
    to it, sorted: ``models/*`` and ``triggers/*`` safetensors and JSON files."""
    root = Path(cache) if cache is not None else cache_dir()
    found = []
    for folder in FOLDERS:
        for path in sorted((root / folder).glob("*")):
            relative = path.relative_to(root).as_posix()
            if path.is_file() and not path.is_symlink() and MEMBER.match(relative):
                found.append(Path(relative))
    return found


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack(out: str | Path, cache: str | Path | None = None) -> dict:
    """Write the archive of ``cache``'s models and triggers to ``out`` (atomically).

    Returns ``{"path", "sha256", "size", "files": {relative path: {"sha256", "size"}}}``; the
    sha256 is what readers pass to :func:`pull`.
    """
    root = Path(cache) if cache is not None else cache_dir()
    files = cache_files(root)
    if not files:
        raise NgfkitError(f"nothing to pack: {root} has no models/ or triggers/ safetensors files; "
                          "train the models first (run the book, or ngfkit bench attacks)")
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "ngfkit": __version__,
                "files": {p.as_posix(): {"sha256": sha256_file(root / p), "size": (root / p).stat().st_size}
                          for p in files}}
    out = Path(out)
    with atomic_path(out) as tmp:
        # no name and mtime=0 in the gzip header too, so equal caches give equal archives
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            body = json.dumps(manifest, indent=2, sort_keys=True).encode()
            tar.addfile(_tar_info(MANIFEST, len(body)), io.BytesIO(body))
            for p in files:
                with open(root / p, "rb") as f:
                    tar.addfile(_tar_info(p.as_posix(), manifest["files"][p.as_posix()]["size"]), f)
    return {"path": str(out), "sha256": sha256_file(out), "size": out.stat().st_size, "files": manifest["files"]}


def _download(url: str, target: Path, timeout: float) -> str:
    """Stream ``url`` into ``target``; return its sha256."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("https", "http", "file"):
        raise NgfkitError(f"cannot pull {url!r}: only https://, http:// and file:// URLs are read")
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as f:
            while block := response.read(CHUNK):
                size += len(block)
                if size > MAX_BYTES:
                    raise NgfkitError(f"{url} is larger than {MAX_BYTES >> 30} GiB, far more than a cache "
                                      "archive; check the URL")
                digest.update(block)
                f.write(block)
    except NgfkitError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise NgfkitError(f"downloading {url} failed ({type(exc).__name__}: {reason}); check the URL and "
                          "the network connection") from None
    return digest.hexdigest()


def _refuse(url: str, why: str) -> NgfkitError:
    return NgfkitError(f"refused the cache archive {url}: {why}; nothing was unpacked (ask its publisher "
                       "for a fresh copy, or build your own with ngfkit cache pack)")


def _read_manifest(tar: tarfile.TarFile, url: str) -> dict:
    try:
        member = tar.getmember(MANIFEST)
    except KeyError:
        raise _refuse(url, f"it has no {MANIFEST}") from None
    if not member.isfile() or member.size > CHUNK:
        raise _refuse(url, f"its {MANIFEST} is not a small regular file")
    try:
        manifest = json.loads(tar.extractfile(member).read())
    except (ValueError, UnicodeDecodeError):
        raise _refuse(url, f"its {MANIFEST} is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise _refuse(url, f"its {MANIFEST} is not an {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _refuse(url, f"its format version is {manifest.get('format_version')!r}; this ngfkit reads "
                           f"{FORMAT_VERSION} (upgrade ngfkit)")
    return manifest


def _check_member(member: tarfile.TarInfo, manifest: dict, url: str) -> str:
    """The member's normalised name, or a refusal naming the problem."""
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts or "\\" in name:
        raise _refuse(url, f"member {name!r} points outside the cache (path traversal)")
    if member.issym() or member.islnk():
        raise _refuse(url, f"member {name!r} is a link")
    if member.isdir():
        return ""
    if not member.isfile():
        raise _refuse(url, f"member {name!r} is not a regular file")
    if name == MANIFEST:
        return ""
    if not MEMBER.match(name):
        raise _refuse(url, f"member {name!r} is not a models/ or triggers/ safetensors or JSON file")
    if name not in manifest["files"]:
        raise _refuse(url, f"member {name!r} is not in its manifest")
    return name


def _check_safetensors(path: Path, name: str, url: str) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        raise _refuse(url, f"member {name!r} is not a readable safetensors file ({exc})") from None


def pull(url: str, sha256: str, cache: str | Path | None = None, timeout: float = 60.0,
         progress: bool = False) -> list[Path]:
    """Download the archive at ``url``, check it (see the module docstring) and unpack it into
    ``cache`` (default: the ngfkit cache). Returns the paths written, sorted.

    ``sha256`` is the archive's (64 hex digits, as :func:`pack` returns); a mismatch refuses the
    archive before it is opened.
    """
    expected = sha256.strip().lower()
    if not SHA256.match(expected):
        raise NgfkitError(f"--sha256 must be 64 hexadecimal digits (the archive's sha256), not {sha256!r}")
    root = Path(cache) if cache is not None else cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    # staging inside the cache, so that the final renames stay on one file system
    staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=root))
    try:
        archive = staging / "archive.tar.gz"
        if progress:
            print(f"ngfkit: downloading the cache archive {url}", flush=True)
        actual = _download(url, archive, timeout)
        if actual != expected:
            raise _refuse(url, f"its sha256 is {actual}, not the expected {expected} (changed or corrupted)")
        written = []
        try:
            with tarfile.open(archive, mode="r:*") as tar:
                manifest = _read_manifest(tar, url)
                total = 0
                for member in tar.getmembers():
                    name = _check_member(member, manifest, url)
                    if not name:
                        continue
                    total += member.size
                    if total > MAX_BYTES:
                        raise _refuse(url, f"it unpacks to more than {MAX_BYTES >> 30} GiB")
                    target = staging / "files" / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    with open(target, "wb") as f:
                        shutil.copyfileobj(source, f, CHUNK)
                    want = manifest["files"][name]
                    if sha256_file(target) != want.get("sha256") or target.stat().st_size != want.get("size"):
                        raise _refuse(url, f"member {name!r} does not match its manifest's sha256 (tampered)")
                    if name.endswith(".safetensors"):
                        _check_safetensors(target, name, url)
                    written.append(name)
        except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
            raise _refuse(url, f"it is not a readable tar.gz ({type(exc).__name__}: {exc})") from None
        missing = sorted(set(manifest["files"]) - set(written))
        if missing:
            raise _refuse(url, f"its manifest lists {len(missing)} file(s) it does not contain, e.g. {missing[0]!r}")
        paths = []
        for name in sorted(written):
            final = root / name
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / "files" / name, final)
            paths.append(final)
        if progress:
            print(f"ngfkit: {len(paths)} cached file(s) from {url} verified (sha256 {expected[:12]}...) "
                  f"and unpacked into {root}", flush=True)
        return paths
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def release_url() -> str:
    """Where this release's assets are downloaded from (``$NGFKIT_RELEASE_URL`` replaces it)."""
    return (os.environ.get(RELEASE_ENV) or f"{REPOSITORY}/releases/download/{RELEASE_TAG}").rstrip("/")


def release_archive(timeout: float = 60.0) -> tuple[str, str] | None:
    """``(url, sha256)`` of the readers' archive published with this release, or ``None`` when
    the release has none (HTTP 404: not published yet, or a development version).

    The sha256 comes from the release's ``.sha256`` asset; :func:`pull` then checks the archive
    against it and every member against the archive's manifest, so a changed or corrupted
    archive is refused before anything is unpacked.
    """
    url = f"{release_url()}/{RELEASE_ASSET}"
    try:
        with urllib.request.urlopen(f"{url}.sha256", timeout=timeout) as response:
            text = response.read(4096).decode("ascii", "replace")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise NgfkitError(f"downloading {url}.sha256 failed (HTTP {exc.code}); try again later, or pass the "
                          "archive's URL and --sha256 yourself") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise NgfkitError(f"downloading {url}.sha256 failed ({type(exc).__name__}: {reason}); check the network "
                          "connection") from None
    words = text.split()
    if not words or not SHA256.match(words[0].lower()):
        raise NgfkitError(f"{url}.sha256 does not start with a sha256 (64 hexadecimal digits); the release's "
                          "assets are damaged, ask its publisher")
    return url, words[0].lower()
