"""Progress bars for people, not for stored outputs.

A reader running a chapter live wants to see a long loop move; the stored notebook (and so the
site) should not keep dozens of frozen bars, one of them stuck at 95 %, that read like a crash.
:func:`tqdm` is ``tqdm.auto.tqdm`` (a widget in Jupyter, text elsewhere) that switches itself off
when ``LLMBOOK_PROGRESS=0`` is set, as the book's executor and ``make nbval`` do. The switch wins
over a caller's ``disable=False``, which is why this is not tqdm's own ``TQDM_DISABLE`` (that one
only changes the default).
"""

from __future__ import annotations

import os
from typing import Any

from tqdm.auto import tqdm as _auto_tqdm

__all__ = ["ENV", "enabled", "tqdm"]

ENV = "LLMBOOK_PROGRESS"


def enabled() -> bool:
    """False when ``LLMBOOK_PROGRESS`` is ``0`` (or ``false``/``no``/``off``)."""
    return os.environ.get(ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def tqdm(*args: Any, **kwargs: Any) -> _auto_tqdm:
    """``tqdm.auto.tqdm(*args, **kwargs)``, disabled when :func:`enabled` is False."""
    if not enabled():
        kwargs["disable"] = True
    return _auto_tqdm(*args, **kwargs)
