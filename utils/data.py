"""The book's datasets: WikiText-2, IMDb and Tiny Shakespeare.

Every loader looks for its files in this order and says which source it used:

1. ``$LLMBOOK_DATA_DIR`` — a local folder laid out like ``../shared/data`` (``wikitext-2/train.txt``,
   ``imdb/imdb_50k.csv.gz``, ``tinyshakespeare/input.txt``). If the variable is set, the files must be
   there: a wrong path is an error, not a silent fallback.
2. the download cache ``$LLMBOOK_CACHE_DIR`` (default ``~/.cache/llmbook``);
3. a download from upstream when the host answers, into the cache;
4. a small generated corpus (:mod:`utils.corpus`), announced loudly: numbers computed on it mean
   nothing. ``LLMBOOK_NO_FALLBACK=1`` turns this last step into an error.

Every file is checked against its SHA-256 before use; a corrupt or truncated file raises
:class:`ChecksumError` naming the file and the expected checksum. ``LLMBOOK_OFFLINE=1`` skips
network access altogether.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
import sys
import tarfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from . import corpus
from .atomic import atomic_path
from .network import (
    OFFLINE_ENV as OFFLINE_ENV,
)  # re-exported: the variable the loaders honour
from .network import network_available, offline_forced

DATA_DIR_ENV = "LLMBOOK_DATA_DIR"
CACHE_DIR_ENV = "LLMBOOK_CACHE_DIR"
NO_FALLBACK_ENV = "LLMBOOK_NO_FALLBACK"


class ChecksumError(RuntimeError):
    """A data file does not have the expected checksum (corrupt, truncated or a different version)."""


class DatasetUnavailable(RuntimeError):
    """No source could provide a dataset and the generated fallback is disabled."""


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset, as laid out in the data folder, with its checksum and upstream URLs."""

    relpath: str
    sha256: str
    size: int
    urls: tuple[str, ...] = ()


# Checksums of the files in ../shared/data (see its SHA256SUMS and README for provenance).
_WIKITEXT_UPSTREAM = "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/"
FILES: dict[str, DataFile] = {
    f.relpath: f
    for f in [
        DataFile(
            "wikitext-2/train.txt",
            "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
            10_797_148,
            (_WIKITEXT_UPSTREAM + "train.txt",),
        ),
        DataFile(
            "wikitext-2/valid.txt",
            "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
            1_121_681,
            (_WIKITEXT_UPSTREAM + "valid.txt",),
        ),
        DataFile(
            "wikitext-2/test.txt",
            "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
            1_256_449,
            (_WIKITEXT_UPSTREAM + "test.txt",),
        ),
        DataFile(
            "tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            1_115_394,
            (
                "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                "tinyshakespeare/input.txt",
            ),
        ),
        # Upstream ships a tarball of 100k small files; we build this csv.gz from it (see
        # _build_imdb_csv). Our build is not byte-identical to the local copy, so a freshly built
        # file is checked by the tarball's checksum instead.
        DataFile(
            "imdb/imdb_50k.csv.gz",
            "0cb6c78a9041150948490b00a3e0b1c5477c3b228c775e617d89d140f4687604",
            25_558_979,
        ),
    ]
}
# Maas et al. (2011); the MD5 is the one torchtext used for this archive.
IMDB_TARBALL_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_TARBALL_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"


@dataclass
class Dataset:
    """A loaded dataset.

    Attributes:
        name: e.g. ``"wikitext-2"``.
        splits: split name → data (the type is documented by each loader).
        source: ``"local"``, ``"cache"``, ``"download"`` or ``"generated"``.
        location: the folder or URL it came from (or a description of the generator).
    """

    name: str
    splits: dict[str, Any]
    source: str
    location: str
    notes: list[str] = field(default_factory=list)

    @property
    def generated(self) -> bool:
        return self.source == "generated"

    def __getitem__(self, split: str) -> Any:
        if split not in self.splits:
            raise KeyError(
                f"{self.name} has no split {split!r}; splits: {list(self.splits)}"
            )
        return self.splits[split]

    def describe(self) -> str:
        """One line for the page: what was loaded and from where, without this machine's paths
        (``location`` keeps the full path for debugging)."""
        sizes = ", ".join(f"{k}: {len(v):,}" for k, v in self.splits.items())
        where = {
            "local": f"the local data folder (${DATA_DIR_ENV})",
            "cache": "the download cache",
        }.get(self.source, f"{self.source} ({self.location})")
        return f"{self.name} from {where}; sizes {sizes}"


# --------------------------------------------------------------------------- files and checksums


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=64)
def _verified(path: str, mtime_ns: int, size: int, expected: str) -> bool:
    # Cached on (path, mtime, size) so a notebook that loads a split twice hashes it once.
    actual = sha256_of(Path(path))
    if actual != expected:
        raise ChecksumError(
            f"{path}: SHA-256 is {actual}, expected {expected} (size {size:,} bytes). The file is "
            "corrupt, truncated or a different version: delete it or point "
            f"{DATA_DIR_ENV} at a good copy, then run again."
        )
    return True


def verify_file(path: Path, spec: DataFile) -> Path:
    """Return ``path`` if its SHA-256 matches ``spec``; raise :class:`ChecksumError` otherwise."""
    st = path.stat()
    _verified(str(path), st.st_mtime_ns, st.st_size, spec.sha256)
    return path


def data_dir() -> Path | None:
    """The local data folder from ``$LLMBOOK_DATA_DIR``, or None when the variable is unset."""
    value = os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{DATA_DIR_ENV}={value!r} is not a folder. Point it at a folder laid out like "
            "wikitext-2/train.txt, imdb/imdb_50k.csv.gz, tinyshakespeare/input.txt, or unset it."
        )
    return path


def cache_dir() -> Path:
    """Where downloads are kept: ``$LLMBOOK_CACHE_DIR`` or ``~/.cache/llmbook``."""
    return Path(
        os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "llmbook"
    ).expanduser()


def download(url: str, dest: Path, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` atomically (a temporary file, then rename), with a progress bar."""
    from .progress import tqdm

    with (
        atomic_path(dest) as tmp,
        urllib.request.urlopen(url, timeout=timeout) as resp,
        open(tmp, "wb") as out,
    ):
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
            while block := resp.read(1 << 16):
                out.write(block)
                bar.update(len(block))
    return dest


def _try_download(spec: DataFile, dest: Path) -> bool:
    """Download ``spec`` from its first reachable URL into ``dest`` and verify it."""
    if offline_forced():
        return False
    for url in spec.urls:
        parts = urlparse(url)
        if not network_available(
            parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        ):
            continue
        try:
            download(url, dest)
        except (urllib.error.URLError, OSError) as err:
            print(f"download of {url} failed: {err}", file=sys.stderr)
            continue
        try:
            verify_file(dest, spec)
        except ChecksumError:
            dest.unlink(missing_ok=True)  # never leave a bad file in the cache
            raise
        return True
    return False


def locate(relpath: str) -> tuple[Path, str] | None:
    """Find a verified copy of one data file: (path, source) or None if only the fallback is left."""
    spec = FILES[relpath]
    local = data_dir()
    if local is not None:
        path = local / relpath
        if not path.exists():
            raise FileNotFoundError(
                f"{DATA_DIR_ENV} is set to {str(local)!r} but {path} does not exist "
                f"(expected SHA-256 {spec.sha256}). Fix the folder or unset {DATA_DIR_ENV}."
            )
        return verify_file(path, spec), "local"
    cached = cache_dir() / "data" / relpath
    if cached.exists():
        return verify_file(cached, spec), "cache"
    if _try_download(spec, cached):
        return cached, "download"
    return None


def _fallback(name: str) -> None:
    if os.environ.get(NO_FALLBACK_ENV, "").lower() in ("1", "true", "yes"):
        raise DatasetUnavailable(
            f"{name}: no local copy ({DATA_DIR_ENV} unset), no cached copy in {cache_dir()}, no "
            f"network, and {NO_FALLBACK_ENV} forbids the generated corpus."
        )
    banner = (
        f"!!! {name}: NO REAL DATA FOUND — using a small GENERATED corpus instead. !!!\n"
        f"!!! Numbers below only show that the code runs; they say nothing about {name}.  !!!\n"
        f"!!! Set {DATA_DIR_ENV} to a data folder, or run with a network, for real results. !!!"
    )
    print(banner)
    warnings.warn(f"{name}: using the generated fallback corpus", stacklevel=3)


# --------------------------------------------------------------------------- loaders


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")[:-1]  # the files end with a newline


def load_wikitext2() -> Dataset:
    """WikiText-2 v1 (Merity et al., 2016), tokenized: ``splits`` maps train/valid/test to lines.

    Each split is a ``list[str]``, one entry per line of the original file (headings like
    ``" = Title = "``, paragraphs, and empty lines), without the trailing newline. Rare words are
    already replaced by ``<unk>``; the convention (as in PyTorch's word_language_model example) is
    to split on spaces and add ``<eos>`` at the end of every line.
    """
    found = {s: locate(f"wikitext-2/{s}.txt") for s in ("train", "valid", "test")}
    if all(found.values()):
        source = found["train"][1]
        return Dataset(
            "wikitext-2",
            {s: _read_lines(p) for s, (p, _) in found.items()},
            source,
            str(found["train"][0].parent),
        )
    _fallback("WikiText-2")
    return Dataset(
        "wikitext-2",
        {
            "train": corpus.wikitext_like(1600, seed=1),
            "valid": corpus.wikitext_like(160, seed=2),
            "test": corpus.wikitext_like(160, seed=3),
        },
        "generated",
        "utils.corpus.wikitext_like (toy grammar)",
    )


def _read_imdb_csv(path: Path) -> dict[str, list[tuple[int, str]]]:
    splits: dict[str, list[tuple[int, str]]] = {"train": [], "test": []}
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            splits[row["split"]].append((int(row["label"]), row["text"]))
    return splits


_IMDB_MEMBER = re.compile(r"aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")


def imdb_rows_from_tarball(tar_path: Path) -> list[dict]:
    """Rows ``{split, label, id, rating, text}`` from the upstream ``aclImdb_v1.tar.gz``.

    Sorted by split, label, id — the order of the csv.gz in the local data folder.
    """
    rows = []
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:
            m = _IMDB_MEMBER.search(member.name)
            if not m or not member.isfile():
                continue  # skips unsup/, the vocab and the bag-of-words files
            split, polarity, idx, rating = m.groups()
            text = tar.extractfile(member).read().decode("utf-8")
            rows.append(
                {
                    "split": split,
                    "label": int(polarity == "pos"),
                    "id": int(idx),
                    "rating": int(rating),
                    "text": text,
                }
            )
    rows.sort(key=lambda r: (r["split"], r["label"], r["id"]))
    return rows


def write_imdb_csv(rows: list[dict], dest: Path) -> Path:
    """Write rows as the gzipped csv (``split,label,id,rating,text``) the loader reads."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["split", "label", "id", "rating", "text"])
    writer.writeheader()
    writer.writerows(rows)
    with (
        atomic_path(dest) as tmp,
        gzip.open(tmp, "wt", encoding="utf-8", newline="") as f,
    ):
        f.write(buf.getvalue())
    return dest


def _md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _imdb_from_upstream() -> Path | None:
    """Download the upstream tarball, check its MD5, convert it to ``imdb_built.csv.gz`` in the cache."""
    built = cache_dir() / "data" / "imdb" / "imdb_built.csv.gz"
    if built.exists():
        return built
    if offline_forced() or not network_available(
        urlparse(IMDB_TARBALL_URL).hostname, 443
    ):
        return None
    tar_path = cache_dir() / "data" / "imdb" / "aclImdb_v1.tar.gz"
    if not tar_path.exists():
        download(IMDB_TARBALL_URL, tar_path)
    actual = _md5_of(tar_path)
    if actual != IMDB_TARBALL_MD5:
        tar_path.unlink(missing_ok=True)
        raise ChecksumError(
            f"{tar_path}: MD5 is {actual}, expected {IMDB_TARBALL_MD5}; the download is corrupt "
            "or truncated and was deleted: run again."
        )
    return write_imdb_csv(imdb_rows_from_tarball(tar_path), built)


def load_imdb() -> Dataset:
    """IMDb reviews (Maas et al., 2011): ``splits`` maps train/test to ``list[(label, text)]``.

    ``label`` is 1 for a positive review (rating ≥ 7 of 10), 0 for a negative one (≤ 4); 25,000 of
    each split, balanced. Texts still contain ``<br />`` tags, as upstream.
    """
    found = locate("imdb/imdb_50k.csv.gz")
    if found is not None:
        path, source = found
    else:
        path, source = _imdb_from_upstream(), "download"
    if path is not None:
        return Dataset("imdb", _read_imdb_csv(path), source, str(path.parent))
    _fallback("IMDb")
    return Dataset(
        "imdb",
        {
            "train": corpus.movie_reviews(2000, seed=1),
            "test": corpus.movie_reviews(500, seed=2),
        },
        "generated",
        "utils.corpus.movie_reviews (toy grammar)",
    )


def load_tiny_shakespeare() -> Dataset:
    """Tiny Shakespeare (Karpathy's char-rnn): ``splits["text"]`` is the whole text as one ``str``.

    1,115,394 characters, 65 distinct. Split it yourself (char-level models usually take the first
    90% for training).
    """
    found = locate("tinyshakespeare/input.txt")
    if found is not None:
        path, source = found
        return Dataset(
            "tinyshakespeare",
            {"text": path.read_text(encoding="utf-8")},
            source,
            str(path.parent),
        )
    _fallback("Tiny Shakespeare")
    return Dataset(
        "tinyshakespeare",
        {"text": corpus.play_like(100_000, seed=1)},
        "generated",
        "utils.corpus.play_like (toy grammar)",
    )
