"""The pure parts of tools/compat.py: the floors it reads from pyproject.toml and the pins it makes.

The run itself (a fresh environment at the floors, the setup cell, every chapter) is `make compat`.
"""

import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import compat  # noqa: E402  (tools/ is a folder of scripts, not a package)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _all_declared():
    return [req for reqs in compat.declared(PYPROJECT).values() for req in reqs]


def test_every_declared_requirement_has_a_lower_bound():
    reqs = _all_declared()
    assert len(reqs) >= 10  # dependencies, the [chapters] extra and the build system
    missing = [req for req in reqs if compat.lower_bound(req) is None]
    assert not missing, f"declare a lower bound for: {missing}"


def test_constraints_pin_every_declared_dependency_at_its_floor():
    runtime, build = compat.floors(PYPROJECT)
    lines = compat.constraint_lines(runtime)
    pins = dict(line.split("==") for line in lines)
    for req in PYPROJECT["project"]["dependencies"] + [
        r
        for extra in PYPROJECT["project"]["optional-dependencies"].values()
        for r in extra
    ]:
        name, _ = compat.parse_requirement(req)
        assert name in pins, f"{name} is declared but not constrained"
        if name != "torch":
            assert pins[name] == compat.lower_bound(req), req
    # torch stays at the preinstalled version, as on Colab, and its floor is not above it
    assert lines[0] == compat.PREINSTALLED_TORCH
    assert pins["torch"] == compat.PREINSTALLED_TORCH.split("==")[1]
    assert set(pins) == set(runtime) | {"torch"}
    assert build == {
        "setuptools": compat.lower_bound(PYPROJECT["build-system"]["requires"][0])
    }


def test_the_preinstalled_torch_is_the_pinned_one():
    pinned = compat.pinned((ROOT / "requirements.txt").read_text(), ("torch",))
    assert pinned == [compat.PREINSTALLED_TORCH]


def test_run_tools_come_from_requirements_pins():
    lines = compat.pinned((ROOT / "requirements.txt").read_text(), compat.RUN_TOOLS)
    assert [line.split("==")[0] for line in lines] == list(compat.RUN_TOOLS)
    with pytest.raises(ValueError, match="does not pin nosuchpackage"):
        compat.pinned("torch==2.13.0\n", ("nosuchpackage",))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("torch>=2.6", "2.6"),
        ("scikit_learn >= 1.3, <2", "1.3"),
        ("gguf~=0.10.0", "0.10.0"),
        ("bertviz==1.4.1 ; python_version >= '3.10'", "1.4.1"),
        ("accelerate[testing]>=0.26", "0.26"),
        ("numpy", None),
        ("numpy<3", None),
        ("numpy>1.24", None),  # excludes the version it names: not a floor to install
    ],
)
def test_lower_bound(text, expected):
    assert compat.lower_bound(text) == expected


def test_names_are_canonical_and_bad_requirements_are_refused():
    assert compat.parse_requirement("Scikit_Learn.X>=1")[0] == "scikit-learn-x"
    with pytest.raises(ValueError, match="cannot parse"):
        compat.parse_requirement("numpy >= ")
    with pytest.raises(ValueError, match="more than one lower bound"):
        compat.lower_bound("numpy>=1.24,>=1.26")


def test_floors_refuse_a_missing_bound_and_two_floors():
    base = {"build-system": {"requires": ["setuptools>=77"]}, "project": {}}
    with pytest.raises(ValueError, match="without a lower bound: 'tqdm'"):
        compat.floors({**base, "project": {"dependencies": ["numpy>=1.24", "tqdm"]}})
    two = {
        "dependencies": ["numpy>=1.24"],
        "optional-dependencies": {"x": ["numpy>=1.26"]},
    }
    with pytest.raises(ValueError, match="two floors"):
        compat.floors({**base, "project": two})
    with pytest.raises(ValueError, match="above the preinstalled"):
        compat.constraint_lines({"torch": "2.14"}, preinstalled="torch==2.13.0")


def test_setup_cell_is_the_first_code_cell_of_a_chapter():
    import nbformat
    from test_notebooks import NOTEBOOKS, SETUP_CELL

    for path in NOTEBOOKS[:2]:
        nb = nbformat.read(path, as_version=4)
        assert compat.setup_cell(nb).strip() == SETUP_CELL


def test_report_helpers():
    freeze = "Torch==2.13.0+cpu\n-e git+file:///x@abc#egg=llm_training_book\nScikit_Learn==1.3.0\n"
    versions = compat.parse_freeze(freeze)
    assert versions["torch"] == "2.13.0+cpu" and versions["scikit-learn"] == "1.3.0"
    wrong = compat.floor_mismatches(
        {"torch": "2.13.0", "scikit-learn": "1.3", "gguf": "0.10"}, versions
    )
    assert wrong == ["gguf: floor 0.10, installed None"]
    nb = {
        "cells": [
            {"cell_type": "markdown", "source": "# x"},
            {"cell_type": "code", "source": ["a = 1\n", "b = 2"], "outputs": []},
            {"cell_type": "code", "source": "c", "outputs": [
                {"output_type": "error", "ename": "NameError", "evalue": "name 'c' is not defined"}
            ]},
        ]
    }  # fmt: skip
    assert compat.setup_cell(nb) == "a = 1\nb = 2"
    assert compat.first_error(nb) == "code cell 2: NameError: name 'c' is not defined"
    assert compat.first_error({"cells": nb["cells"][:2]}) is None


def test_the_environment_key_changes_with_its_inputs():
    key = compat.venv_key(["torch==2.13.0"], ["papermill==2.7.0"])
    assert key == compat.venv_key(["torch==2.13.0"], ["papermill==2.7.0"])
    assert key != compat.venv_key(
        ["torch==2.13.0", "numpy==1.24"], ["papermill==2.7.0"]
    )
    assert key != compat.venv_key(["torch==2.13.0"], ["papermill==2.6.0"])
