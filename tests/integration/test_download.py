"""MovieLens archives: the real download path (urllib, sha256, cache, unzip) against a loopback server."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from specrec.config import ArchiveConfig, DataConfig, ValidateConfig
from specrec.data.loaders import load
from specrec.data.validate import validate_interactions, validate_items
from specrec.errors import DownloadError

ML1M_RATINGS = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n2::9999::9::978298414\n"
ML1M_MOVIES = (
    "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
    "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
)
ML100K_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n"
ML100K_ITEM = (
    "242|Kolya (1996)|24-Jan-1997||http://x|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "302|L.A. Confidential (1997)|01-Jan-1997||http://y|0|0|0|0|0|0|1|0|0|0|1|0|0|1|0|0|1|0|0\n"
)


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        _Handler.requests.append(self.path)
        super().do_GET()


def _zip(folder: Path, name: str, files: dict[str, str]) -> str:
    path = folder / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for fname, text in files.items():
            zf.writestr(f"{name}/{fname}", text.encode("latin-1"))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    served = tmp_path / "served"
    served.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/datasets/", served
    httpd.shutdown()
    httpd.server_close()


def _cfg(name: str, base_url: str, sha: str, cache: Path) -> DataConfig:
    return DataConfig(
        source="movielens_archive",
        cache_dir=str(cache),
        archive=ArchiveConfig(name=name, base_url=base_url, sha256=sha),
    )


def test_ml1m_download_verify_extract_and_cache(server: tuple[str, Path], tmp_path: Path) -> None:
    base_url, served = server
    (served / "datasets").mkdir()
    sha = _zip(served / "datasets", "ml-1m", {"ratings.dat": ML1M_RATINGS, "movies.dat": ML1M_MOVIES})
    cfg = _cfg("ml-1m", base_url, sha, tmp_path / "cache")
    raw = load(cfg, tmp_path)
    inter = validate_interactions(raw.interactions, raw.timestamp_unit, ValidateConfig())
    assert len(inter.clean) == 3 and inter.by_reason == {"rating out of range [0.5, 5]": 1}
    items = validate_items(raw.items).clean.set_index("item_id")
    assert items.loc[661, "genres"] == "Animation|Children's|Musical"
    assert (tmp_path / "cache" / "ml-1m.zip").is_file()
    assert _Handler.requests == ["/datasets/ml-1m.zip"]
    load(cfg, tmp_path)  # verified cached copy: no second request
    assert _Handler.requests == ["/datasets/ml-1m.zip"]


def test_ml100k_layout(server: tuple[str, Path], tmp_path: Path) -> None:
    base_url, served = server
    (served / "datasets").mkdir()
    sha = _zip(served / "datasets", "ml-100k", {"u.data": ML100K_DATA, "u.item": ML100K_ITEM})
    raw = load(_cfg("ml-100k", base_url, sha, tmp_path / "cache"), tmp_path)
    assert len(validate_interactions(raw.interactions, raw.timestamp_unit, ValidateConfig()).clean) == 2
    items = validate_items(raw.items).clean.set_index("item_id")
    assert items.loc[242, "genres"] == "Comedy"
    assert items.loc[302, "genres"] == "Crime|Film-Noir|Mystery|Thriller"


def test_checksum_mismatch_is_refused_and_nothing_kept(server: tuple[str, Path], tmp_path: Path) -> None:
    base_url, served = server
    (served / "datasets").mkdir()
    _zip(served / "datasets", "ml-1m", {"ratings.dat": ML1M_RATINGS, "movies.dat": ML1M_MOVIES})
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="checksum mismatch.*expected sha256 0{64}"):
        load(_cfg("ml-1m", base_url, "0" * 64, cache), tmp_path)
    assert list(cache.iterdir()) == []


def test_unreachable_server_is_a_clear_error(server: tuple[str, Path], tmp_path: Path) -> None:
    base_url, _ = server
    with pytest.raises(DownloadError, match="could not fetch .*ml-1m.zip.*base_url"):
        load(_cfg("ml-1m", base_url, "0" * 64, tmp_path / "cache"), tmp_path)  # 404: nothing served there


def test_known_checksums_are_used_by_default() -> None:
    from specrec.data.download import KNOWN_ARCHIVES

    assert set(KNOWN_ARCHIVES) == {"ml-100k", "ml-1m", "ml-20m", "ml-25m", "ml-latest-small"}
    assert all(len(sha) == 64 for _, sha in KNOWN_ARCHIVES.values())
