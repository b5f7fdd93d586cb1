"""Where a dataset's files are looked for: an explicit root, ``NGFKIT_DATA``, a system folder,
the download cache, and finally a download (see :func:`find_dataset_dir`).

Only folders are handled here; reading the files into tensors is each dataset module's job.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..errors import NgfkitError
from .files import first_line

# Per-dataset folders installed by the system, filled in by ``register_dataset(..., system_dirs=...)``.
# A module constant so that tests can redirect it (patch it here, where candidate_dirs reads it).
SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {}
#: ``NGFKIT_SYSTEM_DATA=off`` hides the system folders (a fresh machine simulated on a Debian one)
SYSTEM_DATA_ENV = "NGFKIT_SYSTEM_DATA"
# Whether a dataset missing from every folder is downloaded when the caller did not ask for it:
# off for the CLI and the API (they ask for --download / download=True), on in notebooks
# (ngfkit.book.setup_notebook), where a reader has no flag to pass. A switch, not a constant.
_downloads = {"by_default": False}


def download_by_default(allowed: bool | None = None) -> bool:
    """Turn downloads of missing datasets on or off for calls that pass ``download=False``
    (``allowed``); returns the setting in force."""
    if allowed is not None:
        _downloads["by_default"] = bool(allowed)
    return _downloads["by_default"]


def download_dir(name: str) -> Path:
    """Where downloads of ``name`` go: ``$NGFKIT_CACHE/data/<name>``, else ``~/.cache/ngfkit/data/<name>``."""
    base = os.environ.get("NGFKIT_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "ngfkit") / "data" / name


def candidate_dirs(name: str, root: Path | None) -> list[Path]:
    """Folders to search, best first. An explicit ``root`` is the only place searched, so that a
    wrong ``--data-root`` is reported instead of silently replaced by another copy."""
    if root is not None:
        bases = [root / name, root]
    else:
        bases = []
        env = os.environ.get("NGFKIT_DATA")
        if env:
            bases += [Path(env).expanduser() / name, Path(env).expanduser()]
        if os.environ.get(SYSTEM_DATA_ENV, "").lower() not in ("off", "0", "no", "false"):
            bases += list(SYSTEM_DATA_DIRS.get(name, ()))
        bases.append(download_dir(name))
    unique: list[Path] = []
    for d in bases:
        if d not in unique:
            unique.append(d)
    return unique


def find_dataset_dir(
    name: str,
    title: str,
    root: Path | None,
    download: bool,
    locate: Callable[[Path], Path | None],
    fixes: str,
    fetch: Callable[[Path], None] | None = None,
) -> Path:
    """Search :func:`candidate_dirs` with ``locate`` (folder -> the dataset folder inside it, or
    None); failing that, ``fetch`` into ``root`` or :func:`download_dir` when ``download`` is set.
    Raises a one-line NgfkitError naming where it looked and ``fixes``."""
    looked = candidate_dirs(name, root)
    for folder in looked:
        if folder.is_dir() and (found := locate(folder)) is not None:
            return found
    if (download or download_by_default()) and fetch is not None:
        target = root if root is not None else download_dir(name)
        if not download:
            print(f"ngfkit: {title} is not on this machine (looked in {', '.join(str(d) for d in looked)}); "
                  f"downloading it into {target}, as notebooks do by default", flush=True)
        try:
            target.mkdir(parents=True, exist_ok=True)
            fetch(target)
        except NgfkitError:
            raise
        except Exception as exc:  # network, disk and checksum failures all get the same advice
            raise NgfkitError(
                f"downloading {title} into {target} failed ({type(exc).__name__}: {first_line(exc)}); "
                "check the network connection, or fetch the files yourself and pass data_root=DIR (CLI: --data-root DIR)"
            ) from None
        found = locate(target)
        if found is not None:
            return found
        raise NgfkitError(f"downloaded {title} into {target}, but its files are not where expected; {fixes}")
    raise NgfkitError(f"{title} not found (looked in {', '.join(str(d) for d in looked)}): {fixes}")
