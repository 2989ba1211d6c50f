"""Deterministic CI gates against committed values in results/baselines/ (any machine).

After an intended change, regenerate them with ``python -m arena.bench --write-baselines`` and
commit the diff. The training runs are CPU fp32 at a fixed thread count (recorded in the file),
which makes them reproducible on one torch build; the loss tolerance is 1e-6 relative.
"""
import json

import pytest
import torch

from arena.bench_baselines import BASELINES_DIR, TRAINING_MIXERS, mixer_numbers, training_numbers

MIXERS_FILE, TRAINING_FILE = BASELINES_DIR / "mixers.json", BASELINES_DIR / "training.json"


def test_mixer_flops_params_and_state_sizes_match_committed_values():
    committed = json.loads(MIXERS_FILE.read_text())
    now = mixer_numbers()
    assert now["d_model"] == committed["d_model"] and now["seq_lens"] == committed["seq_lens"]
    assert set(now["mixers"]) >= set(committed["mixers"]), "a committed mixer is no longer registered"
    for name, want in committed["mixers"].items():
        assert now["mixers"][name] == want, f"{name}: {now['mixers'][name]} != committed {want}"


@pytest.mark.parametrize("mixer", TRAINING_MIXERS)
def test_tiny_training_run_matches_committed_loss_and_accuracy(mixer):
    committed = json.loads(TRAINING_FILE.read_text())
    assert committed["threads"] == 2
    want = committed["runs"][mixer]
    threads = torch.get_num_threads()
    torch.set_num_threads(committed["threads"])
    try:
        got = training_numbers(mixer)
    finally:
        torch.set_num_threads(threads)
    assert got["final_loss"] == pytest.approx(want["final_loss"], rel=committed["loss_rtol"])
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-9)
    assert got["steps"] == want["steps"]
