"""utils.atomic.atomic_path: the one atomic write (files and folders)."""

import pytest
import torch

from utils import checkpoint, data
from utils.atomic import atomic_path


def test_file_replaced_only_on_success(tmp_path):
    dest = tmp_path / "sub" / "out.txt"
    with atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent and not dest.exists()
        tmp.write_text("new")
    assert dest.read_text() == "new"
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert dest.read_text() == "new"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["out.txt"]


def test_folder_replaced_whole(tmp_path):
    dest = tmp_path / "export"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in dest.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_users_leave_no_temporary(tmp_path):
    path = tmp_path / "ck.pt"
    checkpoint.save_atomically({"a": torch.ones(2)}, path)
    assert torch.equal(checkpoint.torch.load(path)["a"], torch.ones(2))
    csv_path = data.write_imdb_csv(
        [{"split": "train", "label": 1, "id": 0, "rating": 9, "text": "good"}],
        tmp_path / "imdb" / "imdb.csv.gz",
    )
    assert csv_path.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "ck.pt",
        "imdb",
        "imdb.csv.gz",
    ]
