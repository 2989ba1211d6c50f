"""The tiny run every arena test sweeps: a 1-layer attention model on a small MQAR, 4 steps."""
from arena.config import RunConfig


def tiny(seed: int = 0, mixer: str = "attention", **optim) -> RunConfig:
    return RunConfig.create(
        "mqar", mixer, d_model=16, n_layers=1, mlp=False,
        task_overrides={"vocab_size": 40, "seq_len": 16, "num_kv_pairs": 2, "num_train_examples": 64,
                        "num_test_examples": 16},
        optim={"max_steps": 4, "batch_size": 8, "eval_every": 4, "progress": False, **optim}, seed=seed)
