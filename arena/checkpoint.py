"""Model checkpoints: the run config (JSON) and the weights in one file.

    save_checkpoint("run.safetensors", model, cfg.to_dict())
    model, config = load_checkpoint("run.safetensors")   # rebuilt via arena.execute.build_run

Format: safetensors (``pip install 'arena[lm]'``) with the config JSON in the metadata under
``arena_config``; or, with ``backend="torch"``, a ``torch.save`` dict ``{"format", "config",
"state_dict"}`` loaded with ``weights_only=True``. ``backend="auto"`` picks safetensors and
raises if it is missing (no silent fallback); loading detects the format from the file.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

FORMAT = "arena-checkpoint-1"


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as err:
        raise ImportError("checkpoints in safetensors need the `safetensors` package: pip install 'arena[lm]' "
                          "(or pass backend='torch')") from err
    return safetensors.torch


def save_checkpoint(path, model: torch.nn.Module, run_config: dict, backend: str = "auto") -> Path:
    """Write ``model``'s weights and ``run_config`` (a ``RunConfig.to_dict()``) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config_json = json.dumps(run_config, sort_keys=True, default=list)
    if backend in ("auto", "safetensors"):
        _safetensors().save_model(model, str(path), metadata={"format": FORMAT, "arena_config": config_json})
    elif backend == "torch":
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"format": FORMAT, "config": config_json, "state_dict": state}, path)
    else:
        raise ValueError(f"checkpoint backend {backend!r}: use 'auto', 'safetensors' or 'torch'")
    return path


def read_checkpoint(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config dict, state dict)`` of a checkpoint of either format."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":  # torch.save writes a zip archive
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("format") != FORMAT:
            raise ValueError(f"{path}: not an arena checkpoint")
        return json.loads(blob["config"]), blob["state_dict"]
    st = _safetensors()
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an arena checkpoint (no {FORMAT!r} metadata)")
    return json.loads(meta["arena_config"]), st.load_file(str(path))


def load_checkpoint(path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from the stored run config and load its weights (strict)."""
    from arena.config import RunConfig
    from arena.execute import build_run

    config, state = read_checkpoint(path)
    _, model = build_run(RunConfig.from_dict(config))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), config
