"""lm-eval adapter: run lm-eval tasks on arena checkpoints (``pip install 'arena[eval]'``).

    lm_eval --model arena --model_args pretrained=run.safetensors --tasks arena_mc \\
        --include_path arena/lm_eval_tasks
    lm_eval.simple_evaluate(model=ArenaLM(model=my_language_model), tasks=[...])
    arena eval run.safetensors --tasks arena_mc,arena_ppl,arena_niah

``ArenaLM`` implements lm-eval's three request types on a ``LanguageModel``:

- ``loglikelihood``: (context, continuation) -> (sum of the continuation's log-probabilities,
  whether greedy decoding would produce it), batched ``batch_size`` sequences per forward,
  inputs truncated on the left to ``max_length`` (lm-eval's convention).
- ``loglikelihood_rolling``: the whole string scored in disjoint windows of ``max_length``
  tokens (``lm_eval.utils.get_rolling_token_windows`` with context length 1, as HFLM does).
- ``generate_until``: parallel prefill of the prompt, then ``model.step`` one token at a time
  from the recurrent state (constant memory per token for the linear mixers; the KV cache for
  attention), stopping at the ``until`` strings or ``max_gen_toks``. Prompts are not truncated:
  long-context evaluation is the point. Greedy unless ``do_sample`` with ``temperature > 0``.

Tokenization: arena's byte tokenizer (token = one UTF-8 byte) for byte-level checkpoints; for
``bpe:N`` checkpoints the BPE tokenizer that task ``lm`` trained and cached for the checkpoint's
corpus (or ``tokenizer=PATH`` to a ``tokenizers`` JSON file); never a download.
``max_length`` defaults to the checkpoint's training ``task.seq_len``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
LOCAL_TASKS = ("arena_mc", "arena_ppl", "arena_niah")


class ByteTokenizer:
    """Token ids are the UTF-8 bytes of the text (arena's ``byte`` tokenizer, vocab 256)."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class BPETokenizer:
    """A ``tokenizers`` JSON file (the byte-level BPE that task ``lm`` trains and caches)."""

    def __init__(self, path):
        try:
            import tokenizers
        except ImportError as err:
            raise ImportError("BPE checkpoints need the `tokenizers` package: pip install 'arena[lm]'") from err
        self.path = Path(path)
        self.tok = tokenizers.Tokenizer.from_file(str(self.path))
        self.name = f"bpe@{self.path.name}"
        self.vocab_size = self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)


def tokenizer_for(config: dict, path=None):
    """The tokenizer of a checkpoint's run config (``task.tokenizer``); ``path`` overrides."""
    if path:
        return BPETokenizer(path)
    task = config.get("task", {})
    if task.get("name") != "lm":
        raise ValueError(f"checkpoint of task {task.get('name')!r}: lm-eval needs a text model; "
                         f"train one with `arena run --task lm --save-checkpoint`")
    spec = task.get("tokenizer", "byte")
    if spec == "byte":
        return ByteTokenizer()
    from tasks.lm_data import cache_dir, corpus_documents, corpus_hash, parse_tokenizer

    _, vocab = parse_tokenizer(spec)
    digest = corpus_hash(corpus_documents(task.get("corpus", "stdlib"), task.get("max_corpus_bytes", 0)))
    cached = cache_dir() / f"{digest[:24]}-bpe{vocab}.json"
    if not cached.exists():
        raise FileNotFoundError(f"checkpoint tokenizer {spec!r}: no cached BPE tokenizer at {cached} "
                                f"(it is trained by `arena run --task lm` on corpus {task.get('corpus')!r}); "
                                f"pass tokenizer=PATH in model_args")
    return BPETokenizer(cached)


@register_model("arena")
class ArenaLM(LM):
    """An arena ``LanguageModel`` as an lm-eval model: ``pretrained=CHECKPOINT`` or ``model=...``."""

    def __init__(self, pretrained: str | None = None, model=None, config: dict | None = None,
                 tokenizer=None, batch_size: int | str = 8, max_length: int | None = None,
                 max_gen_toks: int = 256, device: str | None = None, **kwargs):
        super().__init__()
        if (pretrained is None) == (model is None):
            raise ValueError("ArenaLM takes exactly one of pretrained=CHECKPOINT_PATH or model=LanguageModel")
        from tasks.runner import resolve_device

        self._device = resolve_device(device or "auto")
        if pretrained is not None:
            from arena.checkpoint import load_checkpoint

            model, config = load_checkpoint(pretrained, device="cpu")
        self.model = model.to(self._device).eval()
        self.config = config or {}
        if isinstance(tokenizer, (ByteTokenizer, BPETokenizer)):
            self.tokenizer = tokenizer
        elif self.config:
            self.tokenizer = tokenizer_for(self.config, tokenizer)
        else:
            self.tokenizer = BPETokenizer(tokenizer) if tokenizer else ByteTokenizer()
        if self.tokenizer.vocab_size > model.vocab_size:
            raise ValueError(f"tokenizer {self.tokenizer.name} has {self.tokenizer.vocab_size} tokens, "
                             f"the model only {model.vocab_size}")
        self.pretrained = pretrained
        seq_len = self.config.get("task", {}).get("seq_len")
        self.max_length = int(max_length or seq_len or 2048)
        self.max_gen_toks = int(max_gen_toks)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8  # "auto" -> 8
        self.prefix_token = self.tokenizer.encode("\n")[0]  # document separator; arena has no EOS

    @property
    def eot_token_id(self) -> int:
        return self.prefix_token

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name

    # -- loglikelihood ------------------------------------------------------------------------
    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())  # as HFLM: trailing spaces go to the continuation
        if n_spaces:
            continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
        whole = self.tokenizer.encode(context + continuation)
        ctx = self.tokenizer.encode(context)
        cont = whole[len(ctx):]
        if not ctx:
            ctx = [self.prefix_token]
        return ctx, cont

    @torch.no_grad()
    def _loglikelihood_tokens(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """``(sum log p(continuation | context), is_greedy)`` per (context, continuation) token pair."""
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            rows = []
            for i in idx:
                ctx, cont = pairs[i]
                if not cont:
                    raise ValueError("loglikelihood: empty continuation")
                inp = (ctx + cont)[-(self.max_length + 1):][:-1]
                rows.append((inp, cont))
            width = max(len(inp) for inp, _ in rows)
            batch = torch.zeros(len(rows), width, dtype=torch.long)
            for r, (inp, _) in enumerate(rows):  # right padding: causal, so it never reaches the scored positions
                batch[r, :len(inp)] = torch.tensor(inp)
            logprobs = F.log_softmax(self.model(batch.to(self._device)).float(), dim=-1)
            for r, (i, (inp, cont)) in enumerate(zip(idx, rows)):
                n = len(cont)
                lp = logprobs[r, len(inp) - n:len(inp)]  # [n, V]: predictions of the continuation tokens
                target = torch.tensor(cont, device=lp.device)
                greedy = bool((lp.argmax(-1) == target).all())
                out[i] = (float(lp.gather(-1, target[:, None]).sum()), greedy)
        return out  # type: ignore[return-value]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._loglikelihood_tokens([self._encode_pair(*req.args) for req in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        pairs, owner = [], []
        for n, req in enumerate(requests):
            tokens = self.tokenizer.encode(req.args[0])
            windows = get_rolling_token_windows(tokens, self.prefix_token, self.max_length, context_len=1)
            for window in map(make_disjoint_window, windows):
                pairs.append(window)
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (ll, _) in zip(owner, self._loglikelihood_tokens(pairs)):
            totals[n] += ll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate_tokens(self, prompts: list[list[int]], max_new_tokens: int, until: list[str] = (),
                        temperature: float = 0.0, generator: torch.Generator | None = None) -> list[list[int]]:
        """Prompts of one length: prefill in parallel, then recurrent decoding with
        ``model.step``; each row stops at its first ``until`` string or ``max_new_tokens``."""
        if len({len(p) for p in prompts}) != 1:
            raise ValueError("generate_tokens: the prompts of a batch must have one length")
        if not prompts[0]:
            prompts = [[self.prefix_token] for _ in prompts]
        ids = torch.tensor(prompts, dtype=torch.long, device=self._device)
        logits, state = self.model.prefill(ids)
        last = logits[:, -1]
        new = [[] for _ in prompts]
        done = [False] * len(prompts)
        for i in range(max_new_tokens):
            if temperature > 0:
                nxt = torch.multinomial(torch.softmax(last.float() / temperature, -1), 1, generator=generator)[:, 0]
            else:
                nxt = last.argmax(dim=-1)
            for r, t in enumerate(nxt.tolist()):
                if not done[r]:
                    new[r].append(t)
                    if until and any(u in self.tokenizer.decode(new[r]) for u in until):
                        done[r] = True
            if all(done) or i + 1 == max_new_tokens:
                break
            last, state = self.model.step(nxt, state)
        return new

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[tuple, list[int]] = {}
        encoded = []
        for n, req in enumerate(requests):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(kwargs.pop("temperature", 0.0) or 0.0) if kwargs.pop("do_sample", False) else 0.0
            ids = self.tokenizer.encode(context)
            encoded.append(ids)
            key = (len(ids), tuple(until), max_new, temperature)
            groups.setdefault(key, []).append(n)
        out: list[str | None] = [None] * len(requests)
        for (_, until, max_new, temperature), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                gens = self.generate_tokens([encoded[n] for n in chunk], max_new, list(until), temperature)
                for n, toks in zip(chunk, gens):
                    text = self.tokenizer.decode(toks)
                    for u in until:  # cut at the first stop string, as lm-eval's models do
                        text = text.split(u)[0]
                    out[n] = text
                    self.cache_hook.add_partial("generate_until", requests[n].args, text)
        return out  # type: ignore[return-value]


# -- arena eval ---------------------------------------------------------------------------------
def set_offline(offline: bool = True) -> None:
    """Hugging Face hub and datasets offline (read at import, so before lm_eval loads them)."""
    import os

    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"


def task_manager(include_paths=(), tasks=()):
    """lm-eval's TaskManager with arena's local tasks (and ``include_paths``). lm-eval's own
    thousands of task YAMLs are indexed (about 10 s) only when ``tasks`` needs one of them."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR), *map(str, include_paths)]
    local = TaskManager(include_path=paths, include_defaults=False)
    if tasks and all(t in local.all_tasks for t in tasks):
        return local
    return TaskManager(include_path=paths)


def flatten_results(results: dict) -> dict[str, float]:
    """lm-eval's ``results["results"]`` as arena metric keys: ``acc@task=arena_mc``; a filter
    other than ``none`` adds ``filter=NAME``; stderrs are kept as ``acc_stderr@task=...``."""
    from arena.records import metric_key

    flat = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            name, flt = key.split(",", 1)
            settings = {"task": task} if flt == "none" else {"task": task, "filter": flt}
            flat[metric_key(name, **settings)] = float(value)
    return flat


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
