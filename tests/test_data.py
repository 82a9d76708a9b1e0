"""Data plumbing: local folder, checksums, cache, generated fallback, IMDb conversion."""

import gzip
import io
import tarfile
import time

import pytest

from utils import corpus, data


def _fake_spec(tmp_path, content: bytes, relpath="toy/file.txt"):
    import hashlib

    return data.DataFile(relpath, hashlib.sha256(content).hexdigest(), len(content))


def test_verify_file_accepts_good_and_rejects_corrupt_with_expected_checksum(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello world\n")
    spec = _fake_spec(tmp_path, b"hello world\n")
    assert data.verify_file(path, spec) == path
    path.write_bytes(b"hello wor")  # truncated
    with pytest.raises(data.ChecksumError) as err:
        data.verify_file(path, spec)
    assert str(path) in str(err.value) and spec.sha256 in str(err.value)


def test_data_dir_missing_file_is_an_error_not_a_fallback(
    isolated_data_env, monkeypatch
):
    folder = isolated_data_env / "data"
    folder.mkdir()
    monkeypatch.setenv(data.DATA_DIR_ENV, str(folder))
    with pytest.raises(FileNotFoundError, match="wikitext-2/train.txt"):
        data.load_wikitext2()


def test_data_dir_must_be_a_folder(isolated_data_env, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(isolated_data_env / "nope"))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        data.data_dir()


def test_corrupt_local_file_names_file_and_checksum(isolated_data_env, monkeypatch):
    folder = isolated_data_env / "data"
    (folder / "tinyshakespeare").mkdir(parents=True)
    (folder / "tinyshakespeare" / "input.txt").write_text(
        "First Citizen:\nnot the real text\n"
    )
    monkeypatch.setenv(data.DATA_DIR_ENV, str(folder))
    expected = data.FILES["tinyshakespeare/input.txt"].sha256
    with pytest.raises(data.ChecksumError, match=expected):
        data.load_tiny_shakespeare()


def test_fallback_is_announced_loudly(isolated_data_env, capsys):
    with pytest.warns(UserWarning, match="generated fallback"):
        ds = data.load_wikitext2()
    assert ds.generated and ds.source == "generated"
    assert "NO REAL DATA FOUND" in capsys.readouterr().out
    assert set(ds.splits) == {"train", "valid", "test"}
    assert any(line.startswith(" = ") for line in ds["train"])


def test_fallback_can_be_forbidden(isolated_data_env, monkeypatch):
    monkeypatch.setenv(data.NO_FALLBACK_ENV, "1")
    with pytest.raises(data.DatasetUnavailable, match="no network"):
        data.load_imdb()


def test_offline_mode_does_not_wait_for_the_network(isolated_data_env):
    start = time.perf_counter()
    with pytest.warns(UserWarning):
        data.load_tiny_shakespeare()
    assert time.perf_counter() - start < 5


def test_generated_corpora_are_deterministic_and_shaped_like_the_real_ones():
    assert corpus.wikitext_like(20, seed=1) == corpus.wikitext_like(20, seed=1)
    reviews = corpus.movie_reviews(100, seed=0)
    assert sorted({label for label, _ in reviews}) == [0, 1]
    assert sum(label for label, _ in reviews) == 50
    play = corpus.play_like(2000, seed=0)
    assert len(play) == 2000 and ":\n" in play


def test_dataset_describe_and_bad_split():
    ds = data.Dataset("toy", {"train": [1, 2, 3]}, "local", "/x")
    assert "train: 3" in ds.describe()
    with pytest.raises(KeyError, match="splits"):
        ds["valid"]


def _tarball_with(reviews: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in reviews.items():
            payload = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def test_imdb_tarball_conversion_round_trip(tmp_path):
    tar = tmp_path / "aclImdb_v1.tar.gz"
    tar.write_bytes(
        _tarball_with(
            {
                "aclImdb/train/pos/10_9.txt": "Great film.<br />Loved it",
                "aclImdb/train/neg/2_1.txt": 'Awful, "truly"',
                "aclImdb/train/pos/2_8.txt": "Fine\nfilm",
                "aclImdb/test/neg/0_3.txt": "Meh",
                "aclImdb/train/unsup/5_0.txt": "ignored",
                "aclImdb/imdb.vocab": "ignored",
            }
        )
    )
    rows = data.imdb_rows_from_tarball(tar)
    assert [(r["split"], r["label"], r["id"], r["rating"]) for r in rows] == [
        ("test", 0, 0, 3),
        ("train", 0, 2, 1),
        ("train", 1, 2, 8),
        ("train", 1, 10, 9),
    ]
    out = data.write_imdb_csv(rows, tmp_path / "imdb.csv.gz")
    splits = data._read_imdb_csv(out)
    assert splits["train"] == [
        (0, 'Awful, "truly"'),
        (1, "Fine\nfilm"),
        (1, "Great film.<br />Loved it"),
    ]
    assert splits["test"] == [(0, "Meh")]
    with gzip.open(out, "rt") as f:
        assert f.readline().strip() == "split,label,id,rating,text"


@pytest.fixture
def local_upstream(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/'served', standing in for upstream."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(served))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_caches_and_rejects_bad_files(
    isolated_data_env, monkeypatch, local_upstream
):
    served, url = local_upstream
    monkeypatch.delenv(data.OFFLINE_ENV)
    good = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    (served / "input.txt").write_bytes(good)
    spec = _fake_spec(isolated_data_env, good, "tinyshakespeare/input.txt")
    monkeypatch.setitem(
        data.FILES,
        spec.relpath,
        data.DataFile(spec.relpath, spec.sha256, spec.size, (f"{url}/input.txt",)),
    )
    ds = data.load_tiny_shakespeare()
    assert (ds.source, ds["text"]) == ("download", good.decode())
    assert data.load_tiny_shakespeare().source == "cache"  # second call: no download

    # upstream now serves something else: the download is rejected and not kept in the cache
    (data.cache_dir() / "data" / spec.relpath).unlink()
    (served / "input.txt").write_bytes(b"a different file")
    with pytest.raises(data.ChecksumError, match=spec.sha256):
        data.load_tiny_shakespeare()
    assert not (data.cache_dir() / "data" / spec.relpath).exists()


def test_describe_shows_no_machine_path():
    ds = data.Dataset("x", {"train": [1, 2, 3]}, "local", "/home/someone/data/x")
    assert "/home/someone" not in ds.describe()
    assert "local data folder" in ds.describe()
    assert (
        data.Dataset("x", {}, "download", "https://example.org/x")
        .describe()
        .startswith("x from download (https://example.org/x)")
    )
