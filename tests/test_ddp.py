"""utils.ddp: the data split, the argument checks, the memory arithmetic, and real torchrun runs.

The default set launches torchrun once (2 gloo processes, a tiny model on the generated corpus,
about 6 s on 2 cores): its averaged gradients must equal the single-process gradients of the
global batch. The slow set adds FSDP, a run that fails inside a worker and 1 vs 2 processes.
"""

import os
import subprocess
import sys

import pytest
import torch

from utils import corpus, ddp

TINY = dict(d_model=16, n_heads=2, n_layers=1, seq_len=8, global_batch=4, steps=2)


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory):
    """Token ids of a small generated corpus (independent of LLMBOOK_DATA_DIR)."""
    tokens = ddp.make_tokens(
        corpus.wikitext_like(60, seed=1), vocab_size=200, source="test"
    )
    return ddp.save_tokens(tmp_path_factory.mktemp("ddp") / "tokens.pt", tokens)


def _config(tmp_path, tokens_file, **overrides):
    return ddp.RunConfig(
        out=str(tmp_path / "out.pt"), tokens=tokens_file, **{**TINY, **overrides}
    )


# ------------------------------------------------------------------------------------ data split


def test_global_batch_targets_are_the_inputs_shifted_by_one():
    ids = torch.arange(100)
    order = ddp.window_order(ids.numel(), seq_len=6, seed=0)
    assert sorted(order.tolist()) == list(range(99 // 6))
    x, y = ddp.global_batch_at(ids, order, step=1, global_batch=4, seq_len=6)
    assert x.shape == y.shape == (4, 6)
    torch.testing.assert_close(y, x + 1)  # ids are 0..99: the next token is the id + 1
    assert (x[:, 0] % 6 == 0).all()  # windows start at multiples of seq_len
    x_again, _ = ddp.global_batch_at(ids, order, step=1, global_batch=4, seq_len=6)
    torch.testing.assert_close(x, x_again)


def test_global_batch_wraps_around_the_windows():
    ids = torch.arange(13)  # (13 - 1) // 3 = 4 windows
    order = ddp.window_order(ids.numel(), seq_len=3, seed=1)
    x, _ = ddp.global_batch_at(ids, order, step=1, global_batch=3, seq_len=3)
    expected = order[torch.tensor([3, 0, 1])] * 3  # rows 3, 4, 5 of the order, modulo 4
    torch.testing.assert_close(x[:, 0], expected)


def test_shards_are_disjoint_and_cover_the_global_batch():
    batch = torch.arange(24).view(6, 4)
    parts = [ddp.shard(batch, r, 3) for r in range(3)]
    assert all(p.shape == (2, 4) for p in parts)
    torch.testing.assert_close(torch.cat(parts), batch)
    with pytest.raises(ValueError, match="does not split"):
        ddp.shard(batch, 0, 4)


def test_window_order_needs_enough_tokens():
    with pytest.raises(ValueError, match="no window"):
        ddp.window_order(5, seq_len=8, seed=0)


def test_make_tokens_caps_the_vocabulary_and_ends_lines_with_eos():
    lines = ["", " a b c a ", "", " a d e f g "]
    tokens = ddp.make_tokens(lines, vocab_size=4, source="toy")
    assert tokens["vocab_size"] == 4  # <unk>, <eos>, then the two most frequent words
    # <unk> = 0, <eos> = 1, a = 2 (3 times), b = 3 (first of the words seen once); the rest <unk>
    assert tokens["ids"].tolist() == [2, 3, 0, 2, 1, 2, 0, 0, 0, 0, 1]
    assert tokens["source"] == "toy"


# ------------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize("nproc", [0, -1, 1.5, True])
def test_launch_refuses_a_bad_process_count(tmp_path, tokens_file, nproc):
    with pytest.raises(ValueError, match="number of processes"):
        ddp.launch(nproc, _config(tmp_path, tokens_file))


def test_launch_refuses_a_global_batch_the_processes_do_not_divide(
    tmp_path, tokens_file
):
    with pytest.raises(
        ValueError, match="global_batch=5 is not divisible by the 2 processes"
    ):
        ddp.launch(2, _config(tmp_path, tokens_file, global_batch=5))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"steps": 0}, "steps must be an int >= 1"),
        ({"d_model": 10, "n_heads": 4}, "divisible by n_heads"),
        ({"device": "tpu"}, "device must be one of"),
        ({"strategy": "zero"}, "strategy must be one of"),
        ({"timeout_s": 0}, "timeout_s must be > 0"),
        ({"timed_from": -1}, "timed_from must be an int >= 0"),
    ],
)
def test_check_run_names_the_bad_option(tmp_path, tokens_file, overrides, message):
    with pytest.raises(ValueError, match=message):
        ddp.check_run(_config(tmp_path, tokens_file, **overrides), 1)


def test_launch_refuses_a_missing_tokens_file(tmp_path):
    config = ddp.RunConfig(out=str(tmp_path / "o.pt"), tokens=str(tmp_path / "none.pt"))
    with pytest.raises(ValueError, match="does not exist"):
        ddp.launch(1, config)


def test_the_worker_outside_torchrun_says_how_to_start_it(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit, match="torchrun --standalone"):
        ddp.main(["--steps", "1"])


def test_command_line_round_trips_the_config(tmp_path, tokens_file):
    config = _config(tmp_path, tokens_file, save_grads=True, lr=3e-4, strategy="fsdp")
    argv = ddp.command(2, config)
    assert argv[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node=2"]  # fmt: skip
    parsed = ddp._parser().parse_args(argv[argv.index("utils.ddp") + 1 :])
    assert ddp.RunConfig(**vars(parsed)) == config


def test_torchrun_is_in_the_environment():
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    assert os.access(torchrun, os.X_OK), (
        f"{torchrun} missing: torch's launcher is not installed"
    )


def _processes_naming(text):
    """Ids of the running processes whose command line contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def test_a_run_past_its_time_limit_is_killed(tmp_path, tokens_file):
    config = _config(tmp_path, tokens_file)
    with pytest.raises(TimeoutError, match="killed"):
        ddp.launch(2, config, timeout_s=0.5)
    assert not _processes_naming(config.out)


@pytest.mark.slow
def test_a_running_job_past_its_time_limit_leaves_no_worker_behind(
    tmp_path, tokens_file
):
    config = _config(tmp_path, tokens_file, steps=10**7)
    with pytest.raises(TimeoutError, match="killed"):
        ddp.launch(2, config, timeout_s=8)  # the workers are training by then
    assert not _processes_naming(config.out)


# ----------------------------------------------------------------------------- memory arithmetic


def test_zero_stages_reproduce_the_papers_figure_1():
    """Rajbhandari et al. 2020, Figure 1: 7.5B parameters, 64 devices, mixed-precision Adam."""
    gb = [ddp.zero_bytes_per_device(7.5e9, 64, stage) / 1e9 for stage in range(4)]
    assert [round(x, 1) for x in gb] == [120.0, 31.4, 16.6, 1.9]
    assert ddp.zero_bytes_per_device(1000, 1, 3) == ddp.zero_bytes_per_device(
        1000, 1, 0
    )
    with pytest.raises(ValueError, match="stage"):
        ddp.zero_bytes_per_device(1e9, 8, 4)
    with pytest.raises(ValueError, match="n_devices"):
        ddp.zero_bytes_per_device(1e9, 0, 1)


# ------------------------------------------------------------------------------------ real runs


def _launch_retrying_a_crash(nproc, config):
    """``ddp.launch``, started once more if torchrun *crashed* (a worker killed by a signal).

    On a 2-core machine that other jobs load, a gloo worker has been seen to abort once in a few
    dozen runs before training started. A second crash, or any wrong result, still fails.
    """
    try:
        return ddp.launch(nproc, config)
    except RuntimeError as first:
        if "Signal" not in str(first) and "SIG" not in str(first):
            raise
        print(f"torchrun crashed, starting it once more; its output ended:\n{first}")
        return ddp.launch(nproc, config)


def test_ddp_gradients_equal_single_process_gradients(tmp_path, tokens_file):
    """Two gloo processes, each on half of the global batch: after DDP's all-reduce every rank
    holds the gradient of the whole global batch, as one process computes it."""
    results = _launch_retrying_a_crash(
        2, _config(tmp_path, tokens_file, save_grads=True)
    )
    assert (results["world_size"], results["backend"], results["device"]) == (
        2,
        "gloo",
        "cpu",
    )
    assert results["per_rank_batch"] * results["world_size"] == TINY["global_batch"]
    reference = ddp.single_process_gradients(results)
    assert results["grads"].keys() == reference.keys()
    torch.testing.assert_close(results["grads"], reference)
    assert not all(torch.equal(g, torch.zeros_like(g)) for g in reference.values())
    assert len(results["losses"]) == TINY["steps"]
    assert len(results["step_s"]) == results["timed_steps"] == TINY["steps"] - 1
    assert all(t > 0 for t in results["step_s"])
    assert len(results["cpu_s"]) == 2 and all(t > 0 for t in results["cpu_s"])
    assert (
        results["memory"]["params"] == [4 * results["n_params"]] * 2
    )  # a full fp32 replica


@pytest.mark.slow
def test_fsdp_shards_the_state_and_keeps_the_gradients(tmp_path, tokens_file):
    ddp_run = ddp.launch(2, _config(tmp_path, tokens_file, save_grads=True))
    fsdp_run = ddp.launch(
        2, _config(tmp_path, tokens_file, save_grads=True, strategy="fsdp")
    )
    torch.testing.assert_close(
        fsdp_run["grads"], ddp.single_process_gradients(fsdp_run)
    )
    torch.testing.assert_close(fsdp_run["losses"], ddp_run["losses"])
    for key in ("params", "grads", "optimizer"):
        full = ddp_run["memory"][key][0]
        assert sum(fsdp_run["memory"][key]) == full  # the shards add up to one replica
        assert (
            max(fsdp_run["memory"][key]) < 0.6 * full
        )  # ... and each rank holds about half


@pytest.mark.slow
def test_one_and_two_processes_train_the_same_model(tmp_path, tokens_file):
    one = ddp.launch(1, _config(tmp_path, tokens_file, steps=4))
    two = ddp.launch(2, _config(tmp_path, tokens_file, steps=4))
    torch.testing.assert_close(one["losses"], two["losses"])


@pytest.mark.slow
def test_a_failing_worker_raises_with_its_message(tmp_path, tokens_file):
    with pytest.raises(RuntimeError, match="no window"):
        ddp.launch(2, _config(tmp_path, tokens_file, seq_len=10**6))


def test_module_runs_as_a_torchrun_script_from_anywhere(tmp_path):
    """``python -m utils.ddp`` outside torchrun exits with the usage message, not a traceback."""
    out = subprocess.run(
        [sys.executable, "-m", "utils.ddp", "--steps", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 1 and "torchrun --standalone" in out.stderr
