"""tools/gpu_check.py: the bundle ``--prepare`` writes, and the checks in their CPU mode.

The CPU runs start the script from a prepared bundle outside the repository (so it can only use
the ``utils`` modules the bundle carries) with plotly, ipywidgets and IPython made unimportable,
as they are on the GPU machine.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils import corpus

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import gpu_check  # noqa: E402  (tools/ is a folder of scripts, not a package)

BLOCKER = """\
import importlib.abc
import sys

BLOCKED = {blocked!r}


class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
        return None


sys.meta_path.insert(0, _Absent())
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A data folder laid out like ../shared/data, with generated WikiText-style text."""
    folder = tmp_path_factory.mktemp("source")
    (folder / "wikitext-2").mkdir()
    for split, n, seed in (("train", 400, 1), ("valid", 100, 2)):
        text = "\n".join(corpus.wikitext_like(n, seed)) + "\n"
        (folder / "wikitext-2" / f"{split}.txt").write_text(text)
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, source):
    dest = tmp_path_factory.mktemp("bundle") / "gpu_check"
    gpu_check.prepare(dest, str(source))
    return dest


@pytest.fixture(scope="module")
def blocked_env(tmp_path_factory):
    """An environment in which plotly, ipywidgets and IPython cannot be imported (a
    sitecustomize on PYTHONPATH, so that the script's child processes inherit it)."""
    folder = tmp_path_factory.mktemp("blocker")
    (folder / "sitecustomize.py").write_text(
        BLOCKER.format(blocked=gpu_check.MUST_NOT_IMPORT)
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(folder)
    for (
        module
    ) in gpu_check.MUST_NOT_IMPORT:  # the blocker works, or the tests prove nothing
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], env=env)
        assert probe.returncode != 0, module
    return env


def run_bundle(bundle, env, out, *args, timeout=600):
    """Run the bundle's script on the CPU. ``out``: a report file, or a folder given as a string
    ending in "/" (a Path would drop the slash), which gets ``gpu_check_cpu.json``."""
    command = [
        sys.executable,
        str(bundle / "gpu_check.py"),
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    result = subprocess.run(
        [*command, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    report_file = (
        Path(out) / "gpu_check_cpu.json" if str(out).endswith("/") else Path(out)
    )
    report = json.loads(report_file.read_text()) if report_file.is_file() else None
    return result, report


# --- the bundle ---------------------------------------------------------------------------------


def test_prepare_copies_the_script_the_utils_it_imports_and_a_slice_of_the_data(
    bundle, source
):
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    assert (bundle / "gpu_check.py").read_bytes() == (
        ROOT / "tools" / "gpu_check.py"
    ).read_bytes()
    modules = {p.name for p in (bundle / "utils").iterdir()}
    needed = {
        "__init__.py",
        "train.py",
        "models.py",
        "lm_recipes.py",
        "attention_cost.py",
    }
    assert needed <= modules
    # provenance (for --prepare only, needs nbformat), plotting, viz, data: not carried
    assert not modules & {
        "provenance.py",
        "plotting.py",
        "viz.py",
        "data.py",
        "pretrained.py",
    }
    for split, limit in (("train", gpu_check.TRAIN_SLICE_BYTES), ("valid", 200_000)):
        sliced = (bundle / "data" / "wikitext-2" / f"{split}.txt").read_bytes()
        original = (source / "wikitext-2" / f"{split}.txt").read_bytes()
        assert original.startswith(sliced) and sliced.endswith(b"\n")
        assert len(sliced) <= limit
        assert manifest["data"][split]["bytes"] == len(sliced)
    files = [p for p in bundle.rglob("*") if p.is_file() and p.name != "MANIFEST.json"]
    assert sorted(manifest["files"]) == sorted(
        p.relative_to(bundle).as_posix() for p in files
    )
    for rel, info in manifest["files"].items():
        assert info["sha256"] == gpu_check._sha256(bundle / rel)
    assert manifest["total_bytes"] == sum(p.stat().st_size for p in files)
    assert manifest["total_bytes"] <= gpu_check.CARRY_LIMIT_BYTES == 64 * 2**20


def test_prepare_cuts_the_slice_at_a_line_end(tmp_path, source):
    gpu_check.prepare(tmp_path / "b", str(source), train_bytes=5_000, valid_bytes=2_000)
    sliced = (tmp_path / "b" / "data" / "wikitext-2" / "train.txt").read_bytes()
    original = (source / "wikitext-2" / "train.txt").read_bytes()
    assert 4_000 < len(sliced) <= 5_000
    assert original[len(sliced) - 1 : len(sliced)] == b"\n"  # whole lines only


def test_prepare_refuses_a_bundle_larger_than_the_carry_limit(tmp_path, source, capsys):
    with pytest.raises(ValueError, match="more than the"):
        gpu_check.prepare(tmp_path / "b", str(source), carry_limit=100_000)
    assert not (tmp_path / "b").exists()  # nothing half-written
    args = [
        "--prepare",
        str(tmp_path / "c"),
        "--source",
        str(source),
        "--carry-limit-mib",
        "0.1",
    ]
    assert gpu_check.main(args) == 2
    assert "may carry" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_prepare_refuses_folders_it_did_not_write_and_unignored_repository_folders(
    tmp_path, source
):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a bundle"):
        gpu_check.prepare(tmp_path / "mine", str(source))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    if (ROOT / ".git").exists():
        with pytest.raises(ValueError, match="not git-ignored"):
            gpu_check.prepare(ROOT / "results" / "gpu_bundle", str(source))
        assert not (ROOT / "results" / "gpu_bundle").exists()


def test_prepare_rewrites_its_own_bundle(tmp_path, source):
    gpu_check.prepare(tmp_path / "b", str(source), train_bytes=5_000)
    (tmp_path / "b" / "stale.txt").write_text("from an older bundle")
    manifest = gpu_check.prepare(tmp_path / "b", str(source), train_bytes=8_000)
    assert not (tmp_path / "b" / "stale.txt").exists()
    assert manifest["data"]["train"]["bytes"] > 5_000


def test_the_bundle_folder_is_git_ignored():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    probe = subprocess.run(
        [
            "git",
            "check-ignore",
            "-q",
            f"{gpu_check.DEFAULT_BUNDLE}/data/wikitext-2/train.txt",
        ],
        cwd=ROOT,
    )
    assert probe.returncode == 0


# --- the checks on the CPU ----------------------------------------------------------------------


def test_failures_are_isolated_and_time_boxed(bundle, blocked_env, tmp_path):
    """An exception, a hang (killed by its time box) and a dead process each fail only their own
    check; the fp16 path (autocast + GradScaler on the CPU) passes around them."""
    checks = "environment,_selftest_error,_selftest_hang,_selftest_crash,resume"
    result, report = run_bundle(
        bundle, blocked_env, tmp_path / "r.json", "--mode", "t4", "--only", checks
    )
    assert result.returncode == 1, result.stdout + result.stderr
    by_name = {r["name"]: r for r in report["checks"]}
    assert list(by_name) == checks.split(",")
    assert "deliberate error" in by_name["_selftest_error"]["message"]
    assert "timed out after 2 s" in by_name["_selftest_hang"]["message"]
    assert "exited with status 7" in by_name["_selftest_crash"]["message"]
    for name in ("environment", "resume"):
        assert by_name[name]["passed"], by_name[name]
    assert by_name["environment"]["details"]["trainer_precision"] == "fp16"
    assert by_name["environment"]["details"]["imported_but_absent_on_gpu_machine"] == []
    assert by_name["resume"]["details"]["grad_scaler"] is True
    assert not report["passed"]
    assert "FAIL" in result.stdout and "_selftest_hang" in result.stdout


@pytest.mark.slow
def test_cpu_mode_runs_every_check_in_both_modes(bundle, blocked_env, tmp_path):
    result, report = run_bundle(bundle, blocked_env, f"{tmp_path / 'out'}/")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert report["passed"] and report["scale"] == "cpu"
    assert report["device"]["type"] == "cpu" and report["versions"]["torch"]
    names = [
        (r["mode"], r["name"])
        for r in report["checks"]
        if r["name"] != "memory_estimate"
    ]
    assert names == [(m, c) for m in gpu_check.MODES for c in gpu_check.CHECKS]
    for record in report["checks"]:
        assert record["passed"], record
        assert record["peak_memory_bytes"] is None  # measured on CUDA only
    assert (tmp_path / "out" / "gpu_check_cpu.json").is_file()
    assert report["modes"]["native"]["precision"] == "fp32"
    assert report["modes"]["t4"]["precision"] == "fp16"
    assert any("no-ops" in note for note in report["modes"]["t4"]["notes"])
    checks = {(r["mode"], r["name"]): r["details"] for r in report["checks"]}
    assert checks["native", "trainer_lm"]["grad_scale"] is None
    assert checks["t4", "trainer_lm"]["grad_scale"] > 0  # a GradScaler("cpu") ran
    assert checks["t4", "trainer_lm"]["logits_dtype"] == "torch.float16"
    assert checks["t4", "sdpa_backends"]["dtype"] == "torch.float16"
    assert "MATH" in checks["native", "sdpa_backends"]["usable"]
    for mode in gpu_check.MODES:
        assert checks[mode, "trainer_lm"]["train_s_per_step"] > 0
        assert checks[mode, "environment"]["imported_but_absent_on_gpu_machine"] == []
    for check in gpu_check.CHECKS:
        assert check in result.stdout
