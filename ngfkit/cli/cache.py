"""``ngfkit cache pack`` and ``ngfkit cache pull``: the pretrained cache for readers
(:mod:`ngfkit.cache_archive`)."""
from __future__ import annotations

import argparse

from .options import output_options


def pack_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("archive", metavar="ARCHIVE.tar.gz", help="the archive to write (atomically)")
    parser.add_argument("--cache", metavar="DIR", default=None,
                        help="the cache to pack (default: $NGFKIT_CACHE, else ~/.cache/ngfkit)")
    output_options(parser, json_help="also write the archive's sha256 and manifest as JSON")


def cmd_pack(args: argparse.Namespace) -> dict:
    from ..cache_archive import pack

    result = pack(args.archive, args.cache)
    print(f"packed {len(result['files'])} file(s) into {result['path']} ({result['size'] / 2**20:.1f} MiB)")
    print(f"sha256 {result['sha256']}")
    return result


def pull_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", nargs="?", default=None,
                        help="the archive: an https://, http:// or file:// URL (default: the readers' archive "
                             "attached to this release, with the sha256 published beside it)")
    parser.add_argument("--sha256", default=None, metavar="HEX",
                        help="the archive's sha256 (64 hex digits, as printed by ngfkit cache pack), required "
                             "with a URL; a mismatch is refused before anything is unpacked (default: none)")
    parser.add_argument("--cache", metavar="DIR", default=None,
                        help="the cache to fill (default: $NGFKIT_CACHE, else ~/.cache/ngfkit)")
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default: 60)")
    output_options(parser, json_help="also write the list of files unpacked as JSON")


def cmd_pull(args: argparse.Namespace) -> dict:
    from ..cache_archive import pull, release_archive, release_url
    from ..errors import NgfkitError

    url, sha256 = args.url, args.sha256
    if url is None:
        if sha256 is not None:
            raise NgfkitError("--sha256 goes with a URL; without one the release's own sha256 is used")
        found = release_archive(timeout=args.timeout)
        if found is None:
            raise NgfkitError(f"{release_url()} has no readers' cache archive (not published for this version); "
                              "pass an archive's URL and --sha256, or let the models train")
        url, sha256 = found
    elif sha256 is None:
        raise NgfkitError("--sha256 is required with a URL (the archive's sha256, as ngfkit cache pack prints it)")
    paths = pull(url, sha256, args.cache, timeout=args.timeout, progress=not args.quiet)
    return {"url": url, "sha256": sha256.lower(), "files": [str(p) for p in paths]}
