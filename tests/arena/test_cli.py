"""The arena command as a user runs it."""
from __future__ import annotations

import subprocess
import sys

from arena.cli import main


def test_list_prints_every_registered_mixer(capsys):
    from architectures import MIXERS

    assert main(["list", "--d-model", "64", "--seq-len", "128"]) == 0
    out = capsys.readouterr().out
    for name in MIXERS.names():
        assert f"\n{name} " in out


def test_help_is_instant_and_has_examples():
    # --help must not import torch: it stays fast on any machine
    code = "import sys; from arena.cli import main\ntry:\n main(['--help'])\nexcept SystemExit: pass\n" \
           "assert 'torch' not in sys.modules, 'arena --help imported torch'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "examples:" in out.stdout and "arena demo" in out.stdout


def test_demo_runs_end_to_end(capsys):
    assert main(["demo", "--d-model", "32"]) == 0
    assert "MISMATCH" not in capsys.readouterr().out
