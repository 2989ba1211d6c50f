"""Checkpoints round-trip: same config, same logits, in both formats."""
from __future__ import annotations

import pytest
import torch

from arena.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from arena.config import RunConfig
from arena.execute import build_run


@pytest.mark.parametrize("backend", ["safetensors", "torch"])
def test_checkpoint_round_trip_gives_the_same_logits(tmp_path, backend):
    pytest.importorskip("safetensors") if backend == "safetensors" else None
    cfg = RunConfig.create(task="mqar", mixer="attention", d_model=32, n_layers=2,
                           task_overrides={"vocab_size": 64, "seq_len": 32, "num_kv_pairs": 4}, seed=3)
    _, model = build_run(cfg)
    with torch.no_grad():  # move weights off their init so a rebuilt-but-unloaded model would differ
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_checkpoint(tmp_path / f"ckpt.{backend}", model, cfg.to_dict(), backend=backend)
    loaded, config = load_checkpoint(path)
    assert config == cfg.to_dict() or RunConfig.from_dict(config).run_id == cfg.run_id
    x = torch.randint(0, 64, (2, 32))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_not_a_checkpoint_raises(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"hello": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not an arena checkpoint"):
        read_checkpoint(path)


def test_unknown_backend_raises(tmp_path):
    with pytest.raises(ValueError, match="backend"):
        save_checkpoint(tmp_path / "x", torch.nn.Linear(1, 1), {}, backend="pickle")
