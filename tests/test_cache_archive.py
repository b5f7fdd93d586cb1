"""ngfkit.cache_archive: pack a cache, pull it over HTTP (a local server on 127.0.0.1) and file://,
and refuse every kind of bad archive in one line without touching the cache."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from http_helpers import local_file_server
import torch
from safetensors.torch import save_file

from ngfkit.cache_archive import MANIFEST, pack, pull, sha256_file
from ngfkit.errors import NgfkitError


@pytest.fixture
def cache(tmp_path) -> Path:
    root = tmp_path / "cache"
    (root / "models").mkdir(parents=True)
    (root / "triggers").mkdir()
    save_file({"model.w": torch.arange(6.0).reshape(2, 3)}, str(root / "models" / "m-abc.safetensors"))
    (root / "models" / "m-abc.json").write_text(json.dumps({"arch": "smallcnn"}))
    save_file({"pattern": torch.ones(1, 3, 3)}, str(root / "triggers" / "t-def.safetensors"))
    (root / "data").mkdir()  # datasets are never packed
    (root / "data" / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    (root / "models" / "notes.txt").write_text("not packed")
    return root


@pytest.fixture
def server(tmp_path):
    """A file server for tmp_path/www on 127.0.0.1, stopped after the test."""
    www = tmp_path / "www"
    with local_file_server(www) as url:
        yield www, url


def write_tar(path: Path, members: dict[str, bytes], manifest: dict | None = None, links: dict[str, str] = {}):
    with tarfile.open(path, "w:gz") as tar:
        if manifest is not None:
            body = json.dumps(manifest).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return sha256_file(path)


def manifest_of(members: dict[str, bytes]) -> dict:
    return {"format": "ngfkit-cache", "format_version": 1,
            "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in members.items()}}


def test_pack_is_reproducible_and_takes_only_models_and_triggers(cache, tmp_path):
    first = pack(tmp_path / "a.tar.gz", cache)
    second = pack(tmp_path / "b.tar.gz", cache)
    assert first["sha256"] == second["sha256"] == sha256_file(tmp_path / "a.tar.gz")
    assert sorted(first["files"]) == ["models/m-abc.json", "models/m-abc.safetensors", "triggers/t-def.safetensors"]
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        assert tar.getnames()[0] == MANIFEST


def test_pull_over_http_unpacks_into_the_cache(cache, server, tmp_path):
    www, base = server
    packed = pack(www / "cache.tar.gz", cache)
    reader = tmp_path / "reader"
    paths = pull(f"{base}/cache.tar.gz", packed["sha256"], reader)
    assert [p.relative_to(reader).as_posix() for p in paths] == sorted(packed["files"])
    for name in packed["files"]:
        assert (reader / name).read_bytes() == (cache / name).read_bytes()
    assert not any(p.name.startswith(".pull-") for p in reader.iterdir())  # staging removed


def test_pull_from_a_file_url(cache, tmp_path):
    packed = pack(tmp_path / "cache.tar.gz", cache)
    paths = pull((tmp_path / "cache.tar.gz").as_uri(), packed["sha256"].upper(), tmp_path / "reader")
    assert len(paths) == 3


def test_a_wrong_sha256_is_refused_before_unpacking(cache, server, tmp_path):
    www, base = server
    pack(www / "cache.tar.gz", cache)
    reader = tmp_path / "reader"
    with pytest.raises(NgfkitError, match="its sha256 is .* not the expected") as err:
        pull(f"{base}/cache.tar.gz", "0" * 64, reader)
    assert "\n" not in str(err.value)
    assert list(reader.iterdir()) == []


@pytest.mark.parametrize("members, links, why", [
    ({"../evil.json": b"{}"}, {}, "path traversal"),
    ({"/etc/evil.json": b"{}"}, {}, "path traversal"),
    ({"models/run.pkl": b"\x80\x04."}, {}, "not a models/ or triggers/ safetensors or JSON file"),
    ({"models/x.py": b"print(1)"}, {}, "not a models/ or triggers/"),
    ({}, {"models/link.json": "/etc/passwd"}, "is a link"),
    ({"models/bad.safetensors": b"not safetensors at all"}, {}, "not a readable safetensors file"),
])
def test_bad_members_are_refused_in_one_line(tmp_path, members, links, why):
    archive = tmp_path / "bad.tar.gz"
    digest = write_tar(archive, members, manifest_of({**members, **{n: b"" for n in links}}), links)
    reader = tmp_path / "reader"
    with pytest.raises(NgfkitError, match=why) as err:
        pull(archive.as_uri(), digest, reader)
    assert "\n" not in str(err.value) and "nothing was unpacked" in str(err.value)
    assert [p for p in reader.rglob("*") if p.is_file()] == []


def test_a_member_changed_after_packing_is_refused(cache, tmp_path):
    """The archive's own sha256 matches (the attacker republished it), but a member no longer
    matches the manifest: refused, and nothing is written."""
    good = json.dumps({"arch": "smallcnn"}).encode()
    manifest = manifest_of({"models/m.json": good})
    archive = tmp_path / "tampered.tar.gz"
    digest = write_tar(archive, {"models/m.json": b'{"arch": "evil"}'}, manifest)
    with pytest.raises(NgfkitError, match="does not match its manifest's sha256 \\(tampered\\)"):
        pull(archive.as_uri(), digest, tmp_path / "reader")


def test_archives_without_a_manifest_or_not_gzip_are_refused(tmp_path):
    no_manifest = tmp_path / "plain.tar.gz"
    digest = write_tar(no_manifest, {"models/m.json": b"{}"})
    with pytest.raises(NgfkitError, match="has no manifest.json"):
        pull(no_manifest.as_uri(), digest, tmp_path / "reader")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(gzip.compress(b"not a tar"))
    with pytest.raises(NgfkitError, match="not a readable tar.gz"):
        pull(junk.as_uri(), sha256_file(junk), tmp_path / "reader")


def test_bad_arguments_are_one_line_errors(cache, tmp_path):
    with pytest.raises(NgfkitError, match="64 hexadecimal digits"):
        pull("file:///x", "abc", tmp_path)
    with pytest.raises(NgfkitError, match="only https://, http:// and file://"):
        pull("ftp://example.org/x.tar.gz", "0" * 64, tmp_path)
    with pytest.raises(NgfkitError, match="downloading .* failed"):
        pull((tmp_path / "missing.tar.gz").as_uri(), "0" * 64, tmp_path / "reader")
    with pytest.raises(NgfkitError, match="nothing to pack"):
        pack(tmp_path / "out.tar.gz", tmp_path / "empty")


def test_cli_pack_and_pull(cache, server, tmp_path, capsys):
    from ngfkit.cli import main

    www, base = server
    assert main(["cache", "pack", str(www / "c.tar.gz"), "--cache", str(cache), "--json", str(tmp_path / "p.json")]) == 0
    digest = json.loads((tmp_path / "p.json").read_text())["sha256"]
    assert f"sha256 {digest}" in capsys.readouterr().out
    assert main(["cache", "pull", f"{base}/c.tar.gz", "--sha256", digest, "--cache", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "models" / "m-abc.safetensors").is_file()
    assert main(["cache", "pull", f"{base}/c.tar.gz", "--sha256", "f" * 64, "--cache", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ngfkit: error: refused the cache archive") and "\n" not in err


def test_cli_pull_without_a_url_takes_the_release_asset(cache, server, tmp_path, monkeypatch, capsys):
    from ngfkit.cache_archive import RELEASE_ASSET, RELEASE_ENV, release_archive, release_url
    from ngfkit.cli import main
    from ngfkit.version import RELEASE_TAG

    www, base = server
    monkeypatch.delenv(RELEASE_ENV, raising=False)
    assert release_url().endswith(f"/releases/download/{RELEASE_TAG}")
    monkeypatch.setenv(RELEASE_ENV, f"{base}/release")
    (www / "release").mkdir(parents=True)
    assert release_archive() is None  # a release without the asset (404)
    assert main(["cache", "pull", "--cache", str(tmp_path / "none")]) == 2
    assert "has no readers' cache archive" in capsys.readouterr().err
    digest = pack(www / "release" / RELEASE_ASSET, cache)["sha256"]
    (www / "release" / f"{RELEASE_ASSET}.sha256").write_text(f"{digest}  {RELEASE_ASSET}\n")
    assert release_archive() == (f"{base}/release/{RELEASE_ASSET}", digest)
    assert main(["cache", "pull", "--cache", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "models" / "m-abc.safetensors").is_file()
    # the asset swapped for another archive under the old checksum: refused before unpacking
    (www / "release" / RELEASE_ASSET).write_bytes(b"not the packed archive")
    assert main(["cache", "pull", "--cache", str(tmp_path / "t")]) == 2
    assert "changed or corrupted" in capsys.readouterr().err
    assert not (tmp_path / "t" / "models").exists()
    (www / "release" / f"{RELEASE_ASSET}.sha256").write_text("<html>not found</html>")
    with pytest.raises(NgfkitError, match="does not start with a sha256"):
        release_archive()
    assert main(["cache", "pull", f"{base}/release/{RELEASE_ASSET}", "--cache", str(tmp_path / "u")]) == 2
    assert "--sha256 is required with a URL" in capsys.readouterr().err
