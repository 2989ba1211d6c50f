"""Public kernels raced inside arena's own layers: ``arena bench --impl fla,mamba_ssm,...``.

A contender row builds the arena mixer exactly as the ``auto`` row does (projections, conv,
gates, norms: the same code, on a GPU its Triton path) and swaps only the core op
(``Mixer.op_overrides``) for the public kernel behind a thin adapter that converts argument
conventions. So the rows of one mixer differ in that op alone: gates and norms sit outside the
op for every contender, causal masking is part of every op, and inputs reach each op in the same
dtypes (no casts in the adapters, except where a public op needs another layout, as noted).

Fairness is checked, not assumed: before timing, ``agreement`` runs the contender layer and the
arena reference layer (same weights) on one small batch; a row whose output disagrees beyond the
dtype's tolerance is recorded as ``failed`` with the error, and gets no speed number.
"""
from __future__ import annotations

from typing import Callable

import torch

from kernels.bench_utils import import_contender


class ContenderUnavailable(RuntimeError):
    """A contender that cannot run here: the harness prints the reason and writes no record."""


def _import(module: str, attr: str, pip: str):
    """``module.attr``, or ContenderUnavailable naming the package to install (mamba_ssm from
    an unpacked source tree too: see ``kernels.bench_utils.import_contender``)."""
    fn, why = import_contender(module, attr)
    if fn is None:
        raise ContenderUnavailable(f"{why}; pip install {pip}")
    return fn


# --- adapters: arena's op signatures (kernels/<op>/naive.py) -> the public kernels -------------


def fla_gated_delta_rule() -> dict[str, Callable]:
    chunk = _import("fla.ops.gated_delta_rule", "chunk_gated_delta_rule", "fla-core")
    recurrent = _import("fla.ops.gated_delta_rule", "fused_recurrent_gated_delta_rule", "fla-core")

    def chunk_op(q, k, v, g, beta, chunk_size=64, scale=None, initial_state=None, output_final_state=True):
        return chunk(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                     output_final_state=output_final_state)

    def step_op(q, k, v, g, beta, state, scale=None):
        o, new_state = recurrent(q[:, None], k[:, None], v[:, None], g[:, None], beta[:, None], scale=scale,
                                 initial_state=state, output_final_state=True)
        return o[:, 0], new_state
    return {"chunk": chunk_op, "step": step_op}


def fla_simple_gla_as_ssd() -> dict[str, Callable]:
    """Mamba-2's SSD as fla's simple GLA: q = C, k = B (per head), v = dt x, g = dt A, scale 1,
    state [K = N, V = P]. The glue (B and C repeated per head, dt x, the D skip) is timed: a
    user of this kernel runs it too."""
    gla = _import("fla.ops.simple_gla", "chunk_simple_gla", "fla-core")

    def chunk_op(x, dt, A, B, C, D=None, chunk_size=64, initial_state=None, output_final_state=True):
        R = x.shape[2] // B.shape[2]
        q, k = C.repeat_interleave(R, dim=2), B.repeat_interleave(R, dim=2)
        v = (x * dt[..., None]).to(x.dtype)
        h0 = initial_state.transpose(-1, -2) if initial_state is not None else None
        y, h = gla(q, k, v, g=dt * A, scale=1.0, initial_state=h0, output_final_state=output_final_state)
        if D is not None:
            y = y + (D[:, None] * x).to(y.dtype)
        return y, (h.transpose(-1, -2) if h is not None else None)
    return {"chunk": chunk_op}


def mamba_ssm_ssd() -> dict[str, Callable]:
    combined = _import("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined", "mamba-ssm")
    update = _import("mamba_ssm.ops.triton.selective_state_update", "selective_state_update", "mamba-ssm")

    def chunk_op(x, dt, A, B, C, D=None, chunk_size=256, initial_state=None, output_final_state=True):
        y, h = combined(x, dt, A, B, C, chunk_size, D=D, initial_states=initial_state, return_final_states=True)
        return y, (h if output_final_state else None)

    def step_op(x_t, dt_t, A, B_t, C_t, state, D=None):
        """mamba_ssm's Mamba2.step layout: A, dt, D tied over (P, N) as stride-0 views. It
        updates ``state`` in place (a benchmark-only override: the contract's step does not)."""
        H, P, N = state.shape[1:]
        y = update(state, x_t, dt_t[..., None].expand(-1, H, P), A[:, None, None].expand(H, P, N), B_t, C_t,
                   D=D[:, None].expand(H, P) if D is not None else None)
        return y, state
    return {"chunk": chunk_op, "step": step_op}


_GATE_OFF = 1e4  # input gate pre-activation -1e4: exp -> 0; forget pre-activation 1e4: logsigmoid -> 0


def _pad_mlstm(q, k, v, i, f, multiple: int):
    """Pad T up to ``multiple`` with tokens that leave the state exactly as it was (input gate
    off, forget gate fully open), so the final state is the unpadded one; the padding is timed."""
    pad = (-q.shape[1]) % multiple
    if not pad:
        return q, k, v, i, f
    zeros = lambda t: torch.nn.functional.pad(t, (0, 0, 0, 0, 0, pad))  # [B, T, H, D]
    gate = lambda t, value: torch.nn.functional.pad(t, (0, 0, 0, pad), value=value)  # [B, T, H]
    return zeros(q), zeros(k), zeros(v), gate(i, -_GATE_OFF), gate(f, _GATE_OFF)


def mlstm_kernels_xl_chunk() -> dict[str, Callable]:
    """mlstm_kernels' [B, H, T, D] layout: the transposes in and out are timed (noted in rows)."""
    xl_chunk = _import("mlstm_kernels.torch.chunkwise.triton_xl_chunk", "mlstm_chunkwise__xl_chunk",
                       "mlstm_kernels")
    step = _import("mlstm_kernels.torch.recurrent.triton_step", "mlstm_recurrent_step__triton", "mlstm_kernels")

    def chunk_op(q, k, v, i, f, eps=1e-6, chunk_size=64, initial_state=None, output_final_state=True):
        T, chunk = q.shape[1], max(chunk_size, 64)
        # xl_chunk asserts "Sequence length must be divisible by the target chunk size" (H100, 2.0.6)
        q, k, v, i, f = _pad_mlstm(q, k, v, i, f, chunk)
        heads_first = lambda t: t.transpose(1, 2).contiguous()  # noqa: E731
        C0, n0, m0 = initial_state if initial_state is not None else (None, None, None)
        h, (C, n, m) = xl_chunk(heads_first(q), heads_first(k), heads_first(v), heads_first(i), heads_first(f),
                                c_initial=C0, n_initial=n0, m_initial=None if m0 is None else m0[..., None],
                                return_last_states=True, eps=eps, chunk_size=chunk)
        return h.transpose(1, 2)[:, :T], ((C, n, m[..., 0]) if output_final_state else None)

    def step_op(q, k, v, i, f, state, eps=1e-6):
        C, n, m = state
        h, (C, n, m) = step(q, k, v, i[..., None], f[..., None], C, n, m[..., None], eps=eps)
        return h, (C, n, m[..., 0])
    return {"chunk": chunk_op, "step": step_op}


# impl name -> (pip name, {arena mixer: function returning its op overrides})
CONTENDERS: dict[str, tuple[str, dict[str, Callable[[], dict]]]] = {
    "fla": ("fla-core", {"gated_deltanet": fla_gated_delta_rule, "mamba2": fla_simple_gla_as_ssd}),
    "mamba_ssm": ("mamba-ssm", {"mamba2": mamba_ssm_ssd}),
    "mlstm_kernels": ("mlstm_kernels", {"xlstm": mlstm_kernels_xl_chunk}),
    "flash_attn": ("flash-attn", {"attention": lambda: {}}),  # a backend of the attention mixer
}


def contender_ops(impl: str, mixer_name: str, device: torch.device) -> dict[str, Callable]:
    """The op overrides of contender ``impl`` for ``mixer_name``, or ContenderUnavailable."""
    pip, by_mixer = CONTENDERS[impl]
    if mixer_name not in by_mixer:
        raise ContenderUnavailable(f"{impl} has no counterpart of {mixer_name}")
    if device.type != "cuda":
        raise ContenderUnavailable(f"{impl} runs on CUDA devices only (this row's device is {device})")
    if impl == "flash_attn":
        _import("flash_attn", "flash_attn_func", pip)
    return by_mixer[mixer_name]()


def agreement(layer, reference, device: torch.device, dtype: torch.dtype) -> float:
    """||y - y_reference|| / ||y_reference|| on one small batch (B 2, T 300: several chunks and
    a ragged tail) from a zero state; ``reference`` may run in another dtype (fp32): it gets the
    same input values. The fairness check of a contender's adapter, and of arena's own kernels."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(2, 300, layer.d_model, device=device, dtype=dtype, generator=gen)
    ref_dtype = next(reference.parameters()).dtype
    with torch.no_grad():
        y, _ = layer(x)
        y_ref, _ = reference(x.to(ref_dtype))
    return ((y.double() - y_ref.double()).norm() / y_ref.double().norm()).item()
