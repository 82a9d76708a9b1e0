"""The project's tools: the offline check of the built site, and the executor."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from utils import provenance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import check_offline  # noqa: E402  (tools/ is a folder of scripts, not a package)


def _site(tmp_path, body: str, css: str = "") -> Path:
    (tmp_path / "page.html").write_text(
        f"<html><head></head><body>{body}</body></html>"
    )
    if css:
        (tmp_path / "style.css").write_text(css)
    return tmp_path


@pytest.mark.parametrize(
    "body",
    [
        '<script src="https://cdn.example.org/x.js"></script>',
        '<script src="//cdn.example.org/x.js"></script>',
        '<link rel="stylesheet" href="https://fonts.example.org/a.css">',
        '<img src="https://colab.research.google.com/assets/colab-badge.svg">',
        '<script type="module">import m from "https://cdn.example.org/m.mjs";</script>',
    ],
)
def test_remote_resources_are_reported(tmp_path, body):
    assert check_offline.remote_loads(_site(tmp_path, body))


def test_local_resources_and_plain_links_pass(tmp_path):
    body = (
        '<script src="../_static/vendor/require.js"></script>'
        '<link rel="stylesheet" href="_static/a.css">'
        '<a href="https://example.org">a link loads nothing</a>'
        '<script>var s = "https://example.org/only-a-string";</script>'
    )
    assert check_offline.remote_loads(_site(tmp_path, body, css="a{color:red}")) == {}


def test_remote_css_import_is_reported(tmp_path):
    site = _site(tmp_path, "", css='@import "https://fonts.example.org/f.css";')
    assert "style.css" in check_offline.remote_loads(site)


def test_main_fails_without_pages(tmp_path):
    assert check_offline.main([str(tmp_path)]) == 1


@pytest.mark.slow
def test_executor_runs_in_place_and_records_provenance(tmp_path):
    nb = new_notebook(
        cells=[
            new_markdown_cell("# Tiny"),
            new_code_cell("profile = None", metadata={"tags": ["parameters"]}),
            new_code_cell("from utils import nb\nprint(nb.resolve_profile(profile))"),
        ],
        metadata={
            "kernelspec": {
                "name": "python3",
                "display_name": "Python 3",
                "language": "python",
            }
        },
    )
    path = tmp_path / "01_tiny.ipynb"
    nbformat.write(nb, path)
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "execute.py"), str(path)],
        check=True,
        cwd=ROOT,
    )
    done = nbformat.read(path, as_version=4)
    assert (
        done.cells[2].outputs[0]["text"] == "book\n"
    )  # the default profile of the executor
    assert provenance.staleness(done) == []
    assert "papermill" not in done.metadata
    assert all(
        "injected-parameters" not in c.metadata.get("tags", []) for c in done.cells
    )


def _nbval(path: Path) -> subprocess.CompletedProcess:
    """Run `pytest --nbval` on one notebook with the project's options (as `make nbval` does)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval",
            str(path),
            "-q",
            "-p",
            "no:cacheprovider",
            "--nbval-current-env",
            "--nbval-sanitize-with",
            str(ROOT / "tests" / "nbval_sanitize.cfg"),
        ],
        capture_output=True,
        text=True,
        cwd=path.parent,
    )


def _stream(text):
    return nbformat.v4.new_output("stream", name="stdout", text=text)


@pytest.mark.slow
def test_nbval_catches_an_edited_compared_output_but_not_ignored_or_sanitized_ones(
    tmp_path,
):
    cells = [
        new_code_cell("print(6 * 7)", outputs=[_stream("42\n")], execution_count=1),
        new_code_cell(  # machine-dependent: exempt
            "# NBVAL_IGNORE_OUTPUT\nimport os\nprint(os.getpid())",
            outputs=[_stream("1\n")],
            execution_count=2,
        ),
        new_code_cell(  # a duration is masked by the sanitize file
            "print('took 0.25 s')",
            outputs=[_stream("took 9.9 s\n")],
            execution_count=3,
        ),
    ]
    meta = {
        "kernelspec": {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
    }
    good = tmp_path / "good.ipynb"
    nbformat.write(new_notebook(cells=cells, metadata=meta), good)
    result = _nbval(good)
    assert result.returncode == 0, result.stdout + result.stderr

    cells[0].outputs = [_stream("43\n")]  # someone edits a compared output
    bad = tmp_path / "bad.ipynb"
    nbformat.write(new_notebook(cells=cells, metadata=meta), bad)
    result = _nbval(bad)
    assert result.returncode != 0
    assert "1 failed" in result.stdout


def test_the_executor_uses_the_shared_data_and_never_the_fallback(
    tmp_path, monkeypatch
):
    import execute

    from utils import data

    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    monkeypatch.setattr(execute, "SHARED_DATA", shared)
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(data.NO_FALLBACK_ENV, raising=False)
    execute.use_real_data()
    assert data.os.environ[data.DATA_DIR_ENV] == str(shared)
    assert data.os.environ[data.NO_FALLBACK_ENV] == "1"
    # a folder chosen by the caller is kept
    monkeypatch.setenv(data.DATA_DIR_ENV, "/elsewhere")
    execute.use_real_data()
    assert data.os.environ[data.DATA_DIR_ENV] == "/elsewhere"
    # with the fallback off, a missing dataset stops the run instead of using the stand-in corpus
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "empty"))
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "cache"))
    with pytest.raises(data.DatasetUnavailable, match="forbids the generated corpus"):
        data._fallback("WikiText-2")


def test_saved_widget_state_is_dropped_when_no_widget_is_shown():
    import execute

    state = {"application/vnd.jupyter.widget-state+json": {"state": {"m": {}}}}
    nb = new_notebook(cells=[new_code_cell("1")], metadata={"widgets": state})
    execute.drop_unshown_widget_state(nb)
    assert "widgets" not in nb.metadata
    shown = new_code_cell("w")
    shown.outputs = [
        nbformat.v4.new_output(
            "display_data", data={execute.WIDGET_VIEW: {"model_id": "m"}}
        )
    ]
    nb = new_notebook(cells=[shown], metadata={"widgets": state})
    execute.drop_unshown_widget_state(nb)
    assert nb.metadata["widgets"] == state
