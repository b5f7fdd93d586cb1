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
    parser.add_argument("url", help="the archive: an https://, http:// or file:// URL")
    parser.add_argument("--sha256", required=True, metavar="HEX",
                        help="the archive's sha256 (64 hex digits, as printed by ngfkit cache pack); "
                             "a mismatch is refused before anything is unpacked")
    parser.add_argument("--cache", metavar="DIR", default=None,
                        help="the cache to fill (default: $NGFKIT_CACHE, else ~/.cache/ngfkit)")
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default: 60)")
    output_options(parser, json_help="also write the list of files unpacked as JSON")


def cmd_pull(args: argparse.Namespace) -> dict:
    from ..cache_archive import pull

    paths = pull(args.url, args.sha256, args.cache, timeout=args.timeout, progress=not args.quiet)
    return {"url": args.url, "sha256": args.sha256.lower(), "files": [str(p) for p in paths]}
