"""The package index (``utils/__init__.py``) names every module of the package."""

from __future__ import annotations

from pathlib import Path

import utils

UTILS = Path(utils.__file__).resolve().parent


def test_the_index_lists_every_module_once():
    modules = sorted(p.stem for p in UTILS.glob("*.py") if p.stem != "__init__")
    doc = utils.__doc__
    missing = [m for m in modules if f":mod:`utils.{m}`" not in doc]
    assert not missing, f"utils/__init__.py does not list {missing}"
    twice = [m for m in modules if doc.count(f":mod:`utils.{m}` ") > 1]
    assert not twice, f"utils/__init__.py lists {twice} more than once"
