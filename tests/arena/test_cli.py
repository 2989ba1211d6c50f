"""The arena command as a user runs it: each command on a tiny setting, each bad input one line."""
from __future__ import annotations

import subprocess
import sys

import pytest

from arena.cli import main
from tests.arena.tiny import tiny

TINY = ["--set", "model.d_model=16", "--set", "model.n_layers=1", "--set", "model.mlp=false",
        "--set", "task.vocab_size=40", "--set", "task.seq_len=16", "--set", "task.num_kv_pairs=2",
        "--set", "task.num_train_examples=64", "--set", "task.num_test_examples=16",
        "--set", "optim.max_steps=4", "--set", "optim.batch_size=8", "--set", "optim.eval_every=4",
        "--set", "optim.progress=false"]


def _tiny_configs(preset="cpu"):
    return [tiny(0, mixer) for mixer in ("attention", "gated_deltanet")]


def test_list_shows_mixers_tasks_and_recipes(capsys):
    from architectures import MIXERS

    assert main(["list", "--d-model", "64", "--seq-len", "128"]) == 0
    out = capsys.readouterr().out
    for name in [*MIXERS.names(), "mqar", "niah", "zoology_mqar", "demo"]:
        assert f"  {name} " in out
    assert "config: " in out and "runs here: reference" in out


def test_help_is_instant_and_has_examples():
    code = ("import sys; from arena.cli import main\ntry:\n main(['--help'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'arena --help imported torch'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "examples:" in out.stdout and "arena demo" in out.stdout


def test_run_then_leaderboard(tmp_path, capsys):
    args = ["run", "--task", "mqar", "--mixer", "attention", *TINY, "--results", str(tmp_path)]
    assert main(args) == 0
    assert "status ok" in capsys.readouterr().out
    assert main(args) == 0 and "already in" in capsys.readouterr().out  # same config, same run id
    assert main(["leaderboard", "--results", str(tmp_path)]) == 0
    assert "attention" in capsys.readouterr().out


def test_sweep_and_demo_run_their_recipe(tmp_path, capsys, monkeypatch):
    import arena.recipes

    from arena import bench

    monkeypatch.setattr(arena.recipes, "build_recipe", lambda name, preset="cpu": _tiny_configs())
    tiny_bench = {**bench.PRESETS["cpu"], "mixers": ("attention",), "lengths": (32, 64), "passes": ("fwd",),
                  "tokens": 64, "d_model": 32, "warmup": 0, "reps": 1}
    monkeypatch.setitem(bench.PRESETS, "cpu", tiny_bench)
    assert main(["sweep", "demo", "--results", str(tmp_path / "s"), "--workers", "2"]) == 0
    assert main(["demo", "--results", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "gated_deltanet" in out and "records:" in out
    from arena.store import load

    assert sorted(load(tmp_path / "d", kind="train")["mixer"]) == ["attention", "gated_deltanet"]
    throughput = load(tmp_path / "d", kind="bench")
    assert sorted(throughput["seq_len"]) == [32, 64] and (throughput["tokens_per_s"] > 0).all()
    assert (tmp_path / "d" / "dashboards" / "throughput.html").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sweep", "zoology"], "Did you mean 'zoology_mqar'"),
        (["run", "--task", "mqar", "--mixer", "mamba22"], "Did you mean 'mamba2'"),
        (["run", "--task", "mqr", "--mixer", "mamba"], "Did you mean 'mqar'"),
        (["run", "--task", "mqar", "--mixer", "mamba", "--set", "optim.lrr=1"], "Did you mean 'lr'"),
        (["run", "--task", "mqar", "--mixer", "mamba", "--set", "optim.lr=fast"], "expected float"),
        (["run", "--task", "mqar"], "exactly one of --mixer"),
    ],
    ids=["recipe", "mixer", "task", "key", "value-type", "no-mixer"],
)
def test_bad_input_is_one_line_exit_2(argv, message, tmp_path):
    out = subprocess.run([sys.executable, "-m", "arena.cli", *argv, "--results", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_niah_subcommand_hands_its_arguments_to_the_text_niah_cli():
    out = subprocess.run([sys.executable, "-m", "arena.cli", "niah", "--lengths", "64"], capture_output=True, text=True)
    assert out.returncode == 2 and "arena niah: error: give exactly one of CHECKPOINT or --hf DIR" in out.stderr
