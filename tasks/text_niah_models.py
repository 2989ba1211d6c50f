"""Model adapters for text NIAH (``tasks.text_niah``): ``model_fn(prompt_ids, max_new_tokens)``
for an arena ``LanguageModel``, a local Hugging Face causal LM, and an oracle for tests."""
from __future__ import annotations

import re
from pathlib import Path

from tasks.text_niah import ModelFn, as_tokenizer


def arena_model_fn(model, device=None) -> ModelFn:
    """Greedy decoding with ``LanguageModel.generate`` (parallel prefill, then recurrent steps)."""
    import torch

    dev = torch.device(device) if device is not None else next(model.parameters()).device

    def fn(prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        vocab = getattr(model, "vocab_size", None)
        if vocab is not None and max(prompt_ids, default=0) >= vocab:
            raise ValueError(f"text_niah: token id {max(prompt_ids)} >= the model's vocab_size {vocab}; "
                             f"the model needs the tokenizer it was trained with (byte models: vocab 256)")
        x = torch.tensor([prompt_ids], dtype=torch.long, device=dev)
        with torch.no_grad():
            out = model.generate(x, max_new_tokens)
        return out[0, len(prompt_ids):].tolist()

    return fn


def _check_no_hub_kernels(transformers) -> None:
    """transformers imports Hugging Face's ``kernels`` package when a version it takes is installed
    (a hard dependency from transformers 5.25), but ``import kernels`` finds arena's own top-level
    package: loading a model would fail deep inside transformers ("cannot import name
    'CUDAProperties' from 'kernels'"). Name the clash and its fix instead."""
    if transformers.utils.import_utils.is_kernels_available():
        raise ImportError("text_niah: transformers wants Hugging Face's `kernels` package, and arena's own "
                          "`kernels` package shadows it, so no model can load here; remove Hugging Face's "
                          "(`pip uninstall -y kernels`: arena pins transformers < 5.25, which does not need it)")


def hf_model_fn(path: str | Path, device: str = "cpu", dtype: str = "auto"):
    """``(model_fn, tokenizer)`` for a Hugging Face causal LM in a local directory (no download:
    ``local_files_only=True``). Needs ``transformers``. The tokenizer's BOS token is prepended
    when the tokenizer itself would add it."""
    try:
        import torch
        import transformers
    except ImportError as err:
        raise ImportError("text_niah: a Hugging Face model needs the `transformers` package") from err
    _check_no_hub_kernels(transformers)
    tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    torch_dtype = {"auto": "auto", "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True,
                                                              torch_dtype=torch_dtype).to(device).eval()
    with_special = tok("a").input_ids
    bos = [tok.bos_token_id] if tok.bos_token_id is not None and with_special[:1] == [tok.bos_token_id] else []
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def fn(prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        ids = torch.tensor([bos + list(prompt_ids)], dtype=torch.long, device=device)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad)
        return out[0, ids.shape[1]:].tolist()

    return fn, as_tokenizer(tok)


# -- an oracle (tests, sanity checks) -------------------------------------------------------------
def oracle_answer(prompt_text: str, value_type: str = "numbers") -> str:
    """The correct answer read back from a prompt's text alone: the values of the needles whose
    keys the question asks for."""
    m = re.search(r"What are all the special magic \w+ for (.*) mentioned in the provided text\?", prompt_text)
    if not m:
        return ""
    asked = [k for k in re.split(r", and |, ", m.group(1)) if k]
    pairs = re.findall(r"One of the special magic \w+ for (\S+) is: (\S+)\.", prompt_text)
    vals = [v for k, v in pairs if k in asked]
    return " " + ", ".join(dict.fromkeys(vals)) + "."


def oracle_model_fn(tokenizer) -> ModelFn:
    tok = as_tokenizer(tokenizer)
    return lambda ids, max_new: tok.encode(oracle_answer(tok.decode(ids)))[:max_new]
