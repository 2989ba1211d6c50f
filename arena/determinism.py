"""Are a mixer's Triton kernels bitwise deterministic: identical inputs, identical results?

``arena determinism gated_deltanet --d-model 128 --batch 128 --seq-len 256`` builds the mixer
with ``impl="triton"`` and runs forward + backward (bf16 autocast on a GPU, fp32 under
``TRITON_INTERPRET=1``) on the same inputs and weights, ``--reps`` times after a
warm-up that settles autotuning. The output, every parameter gradient and the input gradient are
compared bit for bit with the first run. Every Triton launch's tensor arguments are copied after
the launch, so a difference is traced to the *first launch whose results differ while every
launch before it matched*: the kernel to look at. Buffers from ``torch.empty`` are filled with a
constant meanwhile, so rows that a kernel never writes do not show as differences. A last run
fills them with NaN instead and reports whether any result came out non-finite (a result that
depends on memory nobody wrote).

Why: kernels without atomics are deterministic by construction, unless the compiled code is
wrong. Seen on an H200 with Triton 3.6: Gated DeltaNet's ``bwd_dqkwg`` kernel wrote a ``dw`` that
differed between identical calls (up to 1.7e-6, a third of the elements), so two training runs of
one config diverged; this check named the kernel, and the miscompile was then worked around
(kernels/README.md). The interpreter runs one program at a time, so on a CPU this finds
nondeterminism in the Python around the kernels only; the kernels themselves need the GPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import torch
from torch import Tensor

EMPTY_FILL = 7.0  # what torch.empty holds during the compared runs: finite, and equal every run


@dataclasses.dataclass
class Launch:
    kernel: str
    tensors: list[Tensor | None]  # the launch's tensor arguments, copied after it ran


@dataclasses.dataclass
class Repeat:
    differing: list[str]  # results (output, gradients) that differ from the first run
    first_launch: str | None  # the first launch with differing results, its earlier ones all equal


@dataclasses.dataclass
class Report:
    names: list[str]
    repeats: list[Repeat]
    finite_with_nan_fill: bool | None  # None: the NaN-filled run was not made

    @property
    def deterministic(self) -> bool:
        return all(not r.differing for r in self.repeats)

    def __str__(self) -> str:
        lines = []
        for i, r in enumerate(self.repeats):
            what = "identical" if not r.differing else f"differ: {', '.join(r.differing)}"
            lines.append(f"repeat {i + 1}: {what}" + (f"; first differing launch {r.first_launch}"
                                                       if r.first_launch else ""))
        if self.finite_with_nan_fill is not None:
            lines.append("NaN-filled torch.empty: results " + ("finite" if self.finite_with_nan_fill else
                         "NOT finite: a result depends on memory that nothing wrote"))
        bad = sum(bool(r.differing) for r in self.repeats)
        lines.append(f"{'deterministic' if not bad else 'NOT deterministic'}: {bad} of {len(self.repeats)} "
                     f"repeats differ from the first run")
        return "\n".join(lines)


def _unequal(a: Tensor, b: Tensor) -> Tensor:
    """Where two tensors of one shape differ, NaN counting as equal to NaN."""
    return (a != b) & ~(a.isnan() & b.isnan()) if a.is_floating_point() else a != b


def same(a: Tensor, b: Tensor) -> bool:
    """Bitwise equality, NaN equal to NaN."""
    return a.shape == b.shape and a.dtype == b.dtype and not bool(_unequal(a, b).any())


@contextlib.contextmanager
def record_launches():
    """Every Triton launch meanwhile (compiled or interpreted) appends a ``Launch``."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    launches: list[Launch] = []
    originals = {cls: cls.run for cls in (JITFunction, InterpretedFunction)}

    def spy(original):
        def run(self, *args, grid, warmup, **kwargs):
            out = original(self, *args, grid=grid, warmup=warmup, **kwargs)
            if not warmup:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                copies = [a.detach().clone() if isinstance(a, Tensor) else None for a in args]
                launches.append(Launch(self.fn.__name__, copies))
            return out
        return run

    try:
        for cls, original in originals.items():
            cls.run = spy(original)
        yield launches
    finally:
        for cls, original in originals.items():
            cls.run = original


@contextlib.contextmanager
def filled_empty(value: float):
    """``torch.empty`` / ``empty_like`` / ``Tensor.new_empty`` return ``value``-filled tensors."""
    def filled(make):
        def wrapper(*args, **kwargs):
            t = make(*args, **kwargs)
            return t.fill_(value) if t.is_floating_point() else t.zero_()
        return wrapper

    saved = torch.empty, torch.empty_like, Tensor.new_empty
    torch.empty, torch.empty_like = filled(saved[0]), filled(saved[1])
    Tensor.new_empty = filled(saved[2])
    try:
        yield
    finally:
        torch.empty, torch.empty_like, Tensor.new_empty = saved


def first_differing_launch(ref: list[Launch], got: list[Launch]) -> str | None:
    for i, (a, b) in enumerate(zip(ref, got)):
        if a.kernel != b.kernel:
            return f"#{i}: the launch order changed ({a.kernel} then, {b.kernel} now)"
        bad = [j for j, (u, v) in enumerate(zip(a.tensors, b.tensors)) if u is not None and not same(u, v)]
        if bad:
            detail = ", ".join(f"arg {j} {tuple(a.tensors[j].shape)}: {_diff(a.tensors[j], b.tensors[j])}"
                               for j in bad)
            return f"#{i} {a.kernel} ({detail})"
    return None if len(ref) == len(got) else f"the number of launches changed ({len(ref)} then, {len(got)} now)"


def _diff(a: Tensor, b: Tensor) -> str:
    neq = _unequal(a, b)
    worst = (a.double() - b.double()).abs().nan_to_num(nan=float("inf"))[neq].max().item()
    return f"{int(neq.sum())} of {a.numel()} elements differ, by up to {worst:.3g}"


def check(run: Callable[[], dict[str, Tensor]], reps: int = 4, nan_fill: bool = True) -> Report:
    """``run()`` computes from fixed inputs and returns its results by name; it is called once to
    warm up, once as the reference, ``reps`` times to compare, and once with NaN-filled buffers."""
    run()  # compile and autotune outside the compared runs
    with filled_empty(EMPTY_FILL), record_launches() as launches:
        ref = run()
        ref_launches = list(launches)
        repeats = []
        for _ in range(reps):
            launches.clear()
            got = run()
            differing = [n for n in ref if not same(ref[n], got[n])]
            first = first_differing_launch(ref_launches, launches) if differing else None
            repeats.append(Repeat(differing, first))
    finite = None
    if nan_fill:
        with filled_empty(float("nan")):
            finite = all(bool(torch.isfinite(t).all()) for t in run().values())
    return Report(list(ref), repeats, finite)


def mixer_run(name: str, d_model: int, batch: int, seq_len: int, device: str, seed: int = 0):
    """Forward + backward of ``build_mixer(name, d_model, impl="triton")`` on fixed inputs; bf16
    autocast on CUDA, as training runs it."""
    from architectures import build_mixer

    torch.manual_seed(seed)
    mixer = build_mixer(name, d_model, impl="triton").to(device)
    x = torch.randn(batch, seq_len, d_model, device=device)
    dy = torch.randn(batch, seq_len, d_model, device=device)

    def run() -> dict[str, Tensor]:
        mixer.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_(True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            y, _ = mixer(xx)
        y.float().backward(dy)
        grads = {f"d{n}": p.grad.clone() for n, p in mixer.named_parameters()}
        return {"y": y.detach().clone(), "dx": xx.grad.clone(), **grads}

    return run
