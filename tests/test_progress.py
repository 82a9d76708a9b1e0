"""utils.progress: bars switch off for stored outputs, whatever the caller asked."""

from utils import progress


def test_bars_are_on_by_default(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.enabled()
    with progress.tqdm(total=3, disable=False) as bar:
        assert not bar.disable


def test_the_switch_wins_over_disable_false(monkeypatch):
    monkeypatch.setenv(progress.ENV, "0")
    assert not progress.enabled()
    with progress.tqdm(total=3, disable=False) as bar:
        assert bar.disable
    assert list(progress.tqdm(range(3))) == [0, 1, 2]
