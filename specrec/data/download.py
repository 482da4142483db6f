"""Fetch dataset archives into a cache directory, verified by sha256, never half-written."""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from specrec.errors import DownloadError

log = logging.getLogger(__name__)

# Size in bytes and sha256 of the official GroupLens archives (as recorded by TensorFlow Datasets'
# url_checksums/movielens.txt, Apache-2.0).
KNOWN_ARCHIVES: dict[str, tuple[int, str]] = {
    "ml-100k": (4924029, "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"),
    "ml-1m": (5917549, "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),
    "ml-20m": (198702078, "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3"),
    "ml-25m": (261978986, "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa"),
    "ml-latest-small": (978202, "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"),
}
_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stream(url: str, dest: Path, timeout_s: float) -> None:
    """Copy the body at `url` into `dest`, showing progress."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, dest.open("wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(url).name}") as bar:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        dest.unlink(missing_ok=True)
        raise DownloadError(
            f"could not fetch {url}: {exc}. Check the network, set data.archive.base_url to a mirror, "
            f"or place the verified file at {dest.with_suffix('')} yourself."
        ) from None


def fetch(url: str, dest: Path, sha256: str, timeout_s: float = 60.0) -> Path:
    """Download `url` to `dest` unless a copy with the right checksum is already there."""
    if dest.is_file() and sha256_of(dest) == sha256:
        log.info("using cached %s (sha256 verified)", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _stream(url, part, timeout_s)
    actual = sha256_of(part)
    if actual != sha256:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}. The file was discarded; "
            "the server may be serving a different or corrupt archive. Retry, or use another mirror."
        )
    part.replace(dest)  # atomic: a reader never sees a half-written archive
    log.info("downloaded %s (%d bytes, sha256 verified)", dest, dest.stat().st_size)
    return dest
