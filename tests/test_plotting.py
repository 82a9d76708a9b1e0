"""The plotly renderer: small HTML, content-derived (stable) div ids, plotly.js from the right place."""

import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline
import pytest

from utils import plotting


def _fig(y):
    return go.Figure(go.Scatter(x=[1, 2, 3], y=y), layout={"title": {"text": "t"}})


@pytest.fixture(autouse=True)
def _fresh_session(monkeypatch):
    """Each test starts as a fresh kernel under papermill/nbval: no front end, nothing sent yet."""
    monkeypatch.setattr(plotting, "_plotly_js_sent", False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delenv(plotting.SOURCE_ENV, raising=False)


def test_html_is_small_and_has_no_plotly_library():
    html = plotting.figure_html(_fig([1, 2, 3]))
    assert len(html) < 20_000  # mostly the layout template; plotly.js alone is ~3.5 MB
    assert "newPlot" in html
    assert (
        "<script src=" not in html
    )  # plotly.js comes from the page, not from the output


def test_div_id_is_stable_and_content_derived():
    a1 = plotting.figure_html(_fig([1, 2, 3]))
    a2 = plotting.figure_html(_fig([1, 2, 3]))
    b = plotting.figure_html(_fig([1, 2, 4]))
    assert a1 == a2
    assert a1.split('"')[1] != b.split('"')[1]


def test_renderer_is_registered_as_default():
    assert pio.renderers.default == plotting.RENDERER_NAME
    bundle = pio.renderers[plotting.RENDERER_NAME].to_mimebundle(_fig([1]).to_dict())
    assert list(bundle) == ["text/html"]


def test_show_outputs_html_and_a_stable_text_line():
    from IPython.core.formatters import DisplayFormatter

    bundle, _ = DisplayFormatter().format(
        plotting._HtmlOutput("<b>x</b>", text="[fig]")
    )
    assert bundle == {"text/html": "<b>x</b>", "text/plain": "[fig]"}


def test_source_is_site_headless_inline_in_jupyter_server_and_cdn_on_colab(monkeypatch):
    assert (
        plotting.plotly_source() == "site"
    )  # papermill / nbval: the built site brings plotly.js
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/me/01_background.ipynb")
    assert plotting.plotly_source() == "inline"
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-x")
    assert plotting.plotly_source() == "cdn"
    monkeypatch.setenv(plotting.SOURCE_ENV, "site")
    assert plotting.plotly_source() == "site"


def test_unknown_source_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(plotting.SOURCE_ENV, "internet")
    with pytest.raises(
        ValueError, match="LLMBOOK_PLOTLY='internet' is not one of site, inline"
    ):
        plotting.plotly_source()
    with pytest.raises(ValueError, match="source='x'"):
        plotting.figure_html(_fig([1]), source="x")


def test_site_source_loads_nothing_and_says_so_when_the_page_has_no_plotly():
    html = plotting.figure_html(_fig([1, 2]), source="site")
    assert "http" not in html.replace(
        "https://plotly.com", ""
    )  # no address to fetch from
    assert "needs plotly.js" in html  # shown in the div instead of a blank box


def test_inline_source_sends_the_installed_plotly_js_once_per_session():
    first = plotting.figure_html(_fig([1, 2]), source="inline")
    second = plotting.figure_html(_fig([3, 4]), source="inline")
    library = plotly.offline.get_plotlyjs()
    assert library in first and library not in second
    assert len(second) < 20_000
    assert "http" not in first.replace(library, "").replace("https://plotly.com", "")
    assert first.index("newPlot") < first.index(
        library
    )  # the figure queues, the library flushes


def test_cdn_source_asks_for_the_bundled_plotly_js_version_not_plotly_py():
    html = plotting.figure_html(_fig([1, 2]), source="cdn")
    js_version = plotly.offline.get_plotlyjs_version()
    assert f"https://cdn.plot.ly/plotly-{js_version}.min.js" in html
    assert plotly.offline.get_plotlyjs() not in html
