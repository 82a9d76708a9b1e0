"""The plotly renderer: small HTML, no plotly.js inside, content-derived (stable) div ids."""

import plotly.graph_objects as go
import plotly.io as pio

from utils import plotting


def _fig(y):
    return go.Figure(go.Scatter(x=[1, 2, 3], y=y), layout={"title": {"text": "t"}})


def test_html_is_small_and_has_no_plotly_library():
    html = plotting.figure_html(_fig([1, 2, 3]))
    assert len(html) < 20_000  # mostly the layout template; plotly.js alone is ~3.5 MB
    assert "newPlot" in html
    assert "<script src=" not in html  # plotly.js comes from the page, not from the output


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

    bundle, _ = DisplayFormatter().format(plotting._HtmlOutput("<b>x</b>", text="[fig]"))
    assert bundle == {"text/html": "<b>x</b>", "text/plain": "[fig]"}
