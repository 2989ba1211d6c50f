"""The lm-eval adapter: `arena eval` runs the local tasks offline on tiny checkpoints, with no
network attempt; loglikelihood and recurrent generation agree with the model computed directly;
`execute` saves a loadable checkpoint."""
from __future__ import annotations

import ipaddress
import os
import socket

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval", reason="the lm-eval adapter needs lm-eval: pip install 'arena[eval]'")
pytest.importorskip("safetensors", reason="checkpoints need safetensors: pip install 'arena[lm]'")

from arena.checkpoint import load_checkpoint, save_checkpoint
from arena.config import RunConfig
from arena.execute import build_run

MIXERS = ["attention", "gated_deltanet"]


def lm_config(mixer: str, seq_len: int = 64) -> RunConfig:
    return RunConfig.create("lm", mixer, d_model=16, n_layers=1, task_overrides={"seq_len": seq_len}, seed=0)


def tiny_model(mixer: str):
    cfg = lm_config(mixer)
    _, model = build_run(cfg)
    with torch.no_grad():  # off the init so that logits differ between tokens
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return cfg, model.eval()


@pytest.fixture
def no_network(monkeypatch):
    """Any connect to a non-loopback address raises; the HF offline variables are set."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    attempts = []
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        try:
            loopback = isinstance(host, str) and (host == "localhost" or ipaddress.ip_address(host).is_loopback)
        except ValueError:
            loopback = False
        if self.family == socket.AF_UNIX or loopback:
            return real_connect(self, address)
        attempts.append(address)
        raise OSError(f"network access attempted in an offline test: {address}")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return attempts


@pytest.mark.parametrize("mixer", MIXERS)
def test_arena_eval_runs_the_local_tasks_offline(tmp_path, mixer, no_network, capsys):
    from arena.cli import main
    from arena.store import Store

    cfg, model = tiny_model(mixer)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model, cfg.to_dict())
    rc = main(["eval", str(ckpt), "--tasks", "arena_mc,arena_ppl,arena_niah", "--limit", "3",
               "--batch-size", "2", "--device", "cpu", "--results", str(tmp_path / "res")])
    assert rc == 0 and not no_network
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
    out = capsys.readouterr().out
    assert "arena_mc" in out and "arena_niah" in out
    (record,) = Store(tmp_path / "res").records(kind="eval")
    m = record.metrics
    assert record.status == "ok" and record.extra["checkpoint"] == str(ckpt.resolve())
    assert RunConfig.from_dict(record.config).run_id == cfg.run_id == record.extra["checkpoint_run_id"]
    assert 0.0 <= m["acc@task=arena_mc"] <= 1.0 and 0.0 <= m["acc_norm@task=arena_mc"] <= 1.0
    assert 0.0 <= m["exact_match@task=arena_niah,filter=number"] <= 1.0
    assert 0.0 < m["bits_per_byte@task=arena_ppl"] < 20.0  # an untrained byte model: about log2(256) = 8
    assert m["byte_perplexity@task=arena_ppl"] == pytest.approx(2 ** m["bits_per_byte@task=arena_ppl"], rel=1e-6)
    assert record.extra["n_samples"] == {"arena_mc": 3, "arena_ppl": 3, "arena_niah": 3}


def test_arena_eval_errors_are_one_line(tmp_path, capsys):
    from arena.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path / "missing.safetensors")])
    assert e.value.code == 2 and "no such file" in capsys.readouterr().err
    cfg = RunConfig.create("mqar", "attention", d_model=16, n_layers=1, task_overrides={"vocab_size": 40})
    _, model = build_run(cfg)
    ckpt = save_checkpoint(tmp_path / "mqar.safetensors", model, cfg.to_dict())
    with pytest.raises(SystemExit) as e:
        main(["eval", str(ckpt), "--results", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "needs a text model" in err and len(err.strip().splitlines()) == 1


class _Req:
    def __init__(self, *args):
        self.args = args


@pytest.mark.parametrize("mixer", MIXERS)
def test_loglikelihood_is_the_sum_of_log_softmax(mixer):
    from arena.lm_eval_adapter import ArenaLM

    cfg, model = tiny_model(mixer)
    lm = ArenaLM(model=model, config=cfg.to_dict(), batch_size=2, device="cpu")
    reqs = [("def main()", ":"), ("The sun rises in the", " east"), ("", "hello"), ("x = 1", " + 2\n")]
    got = lm.loglikelihood([_Req(*r) for r in reqs])
    for (ctx, cont), (ll, greedy) in zip(reqs, got):
        ctx_ids = list((ctx or "\n").encode()) if ctx else [10]
        # HFLM's convention: trailing spaces of the context belong to the continuation (none here)
        ids = torch.tensor([ctx_ids + list(cont.encode())])
        with torch.no_grad():
            logp = F.log_softmax(model(ids[:, :-1]).double(), dim=-1)[0]
        n = len(cont.encode())
        target = ids[0, -n:]
        expected = logp[-n:].gather(-1, target[:, None]).sum().item()
        assert ll == pytest.approx(expected, abs=1e-4)
        assert greedy == bool((logp[-n:].argmax(-1) == target).all())


def test_loglikelihood_rolling_covers_every_token_once():
    from arena.lm_eval_adapter import ArenaLM

    cfg, model = tiny_model("gated_deltanet")
    lm = ArenaLM(model=model, config=cfg.to_dict(), max_length=16, device="cpu")
    text = "The quick brown fox jumps over the lazy dog. " * 2
    (total,) = lm.loglikelihood_rolling([_Req(text)])
    ids = list(text.encode())
    # a recurrent model with windows of 16: the same sum computed window by window by hand
    expected, pos = 0.0, 0
    while pos < len(ids):
        end = min(pos + 16, len(ids))
        inp = ([10] + ids)[max(0, end - 16):end]  # the 16 tokens before each predicted one
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([inp])).double(), -1)[0]
        k = end - pos
        expected += logp[-k:].gather(-1, torch.tensor(ids[pos:end])[:, None]).sum().item()
        pos = end
    assert total == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("mixer", MIXERS)
def test_generate_until_equals_model_generate(mixer):
    from arena.lm_eval_adapter import ArenaLM

    cfg, model = tiny_model(mixer)
    lm = ArenaLM(model=model, config=cfg.to_dict(), batch_size=4, device="cpu")
    prompts = ["abcdefgh", "12345678"]  # one length: one batch
    ids = torch.tensor([list(p.encode()) for p in prompts])
    want = model.generate(ids, max_new_tokens=12)[:, ids.shape[1]:].tolist()
    assert lm.generate_tokens([list(p.encode()) for p in prompts], 12) == want
    # through lm-eval's request type; `until` cuts the text at the first stop string
    texts = lm.generate_until([_Req(p, {"until": [], "max_gen_toks": 12}) for p in prompts])
    assert texts == [bytes(w).decode("utf-8", errors="replace") for w in want]
    stop = bytes(want[0][3:5]).decode("utf-8", errors="replace")
    (cut,) = lm.generate_until([_Req(prompts[0], {"until": [stop], "max_gen_toks": 12})])
    assert cut == bytes(want[0]).decode("utf-8", errors="replace").split(stop)[0]


def test_execute_saves_a_loadable_checkpoint(tmp_path):
    from arena.execute import execute
    from arena.store import Store

    cfg = RunConfig.create("mqar", "attention", d_model=16, n_layers=1, mlp=False,
                           task_overrides={"vocab_size": 40, "seq_len": 16, "num_kv_pairs": 2,
                                           "num_train_examples": 64, "num_test_examples": 16},
                           optim={"max_steps": 2, "batch_size": 8, "eval_every": 2, "progress": False})
    record = execute(cfg, Store(tmp_path / "res"), checkpoint_dir=tmp_path / "ckpt")
    assert record.status == "ok", record.error
    path = record.extra["checkpoint"]
    assert path == str(tmp_path / "ckpt" / f"{cfg.run_id}.safetensors") and record.run_id == cfg.run_id
    model, config = load_checkpoint(path)
    assert RunConfig.from_dict(config).run_id == cfg.run_id
    assert Store(tmp_path / "res").records(kind="train")[0].extra["checkpoint"] == path
    assert model(torch.randint(0, 40, (1, 16))).shape == (1, 16, 40)
