"""The Mixer contract, its config base, the MIXERS registry and ``build_mixer``.

A mixer maps ``x: [B, T, d_model]`` to ``y: [B, T, d_model]`` and carries a recurrent state,
a dict of tensors whose first dimension is the batch. See DESIGN.md, "The Mixer contract".
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from arena.registry import Registry, build_config, did_you_mean
from kernels.dtypes import state_dtype  # noqa: F401  (re-exported for mixers)
from kernels.triton_utils import interpreting

State = dict[str, Tensor]

IMPL_CHOICES = ("auto", "reference", "triton")


class ImplUnavailableError(RuntimeError):
    """The requested implementation cannot run here (no kernel, no Triton, wrong device)."""


@dataclass(kw_only=True)
class MixerConfig:
    """Base of every mixer's nested ``Config``: keyword-only, every default from the paper."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def triton_runnable(device: torch.device) -> str | None:
    """Why Triton cannot run on ``device``, or None when it can."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install triton)"
    if device.type == "cuda" or interpreting():
        return None
    return f"Triton kernels need a CUDA device, or TRITON_INTERPRET=1 for CPU tensors; got {device}"


class Mixer(nn.Module, ABC):
    """Sequence mixer: parallel ``forward`` with state in and out, one-token ``step``.

    Subclasses set ``Config`` and ``IMPLS`` (the implementations their file provides), name
    their kernels in ``REFERENCE_OPS`` / ``TRITON_OPS``, and implement the five contract
    methods. ``self.impl`` is the implementation that runs on the module's current device;
    records read it.
    """

    Config: ClassVar[type[MixerConfig]] = MixerConfig
    IMPLS: ClassVar[tuple[str, ...]] = ("reference",)
    # op name -> its reference function / "module:function" of its Triton kernel (read by op)
    REFERENCE_OPS: ClassVar[dict[str, Callable]] = {}
    TRITON_OPS: ClassVar[dict[str, str]] = {}
    registry_name: ClassVar[str] = "?"

    def __init__(self, d_model: int, cfg: MixerConfig, layer_idx: int = 0, impl: str = "auto"):
        super().__init__()
        if not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"{self.registry_name}: d_model must be a positive int, got {d_model!r}")
        self.d_model, self.cfg, self.layer_idx = d_model, cfg, layer_idx
        self.requested_impl = self._check_impl(impl)
        self.op_overrides: dict[str, Callable] = {}

    # -- implementation choice -------------------------------------------------------------
    def _check_impl(self, impl: str) -> str:
        if impl not in IMPL_CHOICES:
            raise ValueError(did_you_mean(impl, IMPL_CHOICES, f"impl for mixer {self.registry_name!r}"))
        if impl != "auto" and impl not in self.IMPLS:
            raise ImplUnavailableError(
                f"mixer {self.registry_name!r} has no {impl!r} implementation (it has: "
                f"{', '.join(self.IMPLS)}); use impl='reference' or impl='auto'"
            )
        return impl

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def impl(self) -> str:
        """The implementation that runs on the current device (``auto`` resolved)."""
        if self.requested_impl == "reference":
            return "reference"
        why_not = triton_runnable(self.device) if "triton" in self.IMPLS else "no Triton kernel"
        if self.requested_impl == "triton":
            if why_not:
                raise ImplUnavailableError(f"mixer {self.registry_name!r}, impl='triton': {why_not}")
            return "triton"
        return "triton" if why_not is None and self.device.type == "cuda" else "reference"

    def op(self, name: str) -> Callable:
        """The function behind the mixer's op ``name`` (e.g. ``"chunk"``, ``"step"``, ``"conv"``):
        an entry of ``op_overrides`` (the benchmark races a public kernel inside the same layer
        this way), else the Triton kernel named in ``TRITON_OPS`` when ``self.impl`` is
        ``"triton"`` (imported on first use: Triton is an optional extra the reference path never
        needs), else ``REFERENCE_OPS[name]``."""
        if name in self.op_overrides:
            return self.op_overrides[name]
        if self.impl == "triton":
            module, function = self.TRITON_OPS[name].split(":")
            return getattr(importlib.import_module(module), function)
        return self.REFERENCE_OPS[name]

    # -- input checks shared by every mixer --------------------------------------------------
    def check_input(self, x: Tensor, rank: int = 3) -> None:
        shape = "[B, T, d_model]" if rank == 3 else "[B, d_model]"
        if x.dim() != rank or x.shape[-1] != self.d_model:
            raise ValueError(
                f"{self.registry_name}: expected input {shape} with d_model={self.d_model}, "
                f"got shape {tuple(x.shape)}"
            )

    # -- the contract --------------------------------------------------------------------------
    @abstractmethod
    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """``x: [B, T, d_model]`` -> ``(y: [B, T, d_model], state)``; continues from ``state``."""

    @abstractmethod
    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One token: ``x_t: [B, d_model]`` -> ``(y_t: [B, d_model], state)``."""

    @abstractmethod
    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        """The state before any token (zeros; attention: an empty KV cache)."""

    @abstractmethod
    def state_size(self, seq_len: int) -> int:
        """Scalars of state carried per sequence after ``seq_len`` tokens (conv buffers included)."""

    @abstractmethod
    def flops(self, seq_len: int) -> int:
        """Analytic forward FLOPs per sequence of ``seq_len`` tokens (a multiply-add is 2)."""

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, impl={self.requested_impl}, {self.cfg}"


MIXERS: Registry[type[Mixer]] = Registry("mixer", base=Mixer, entry_point_group="arena.mixers")


def build_mixer(name: str, d_model: int, impl: str = "auto", layer_idx: int = 0, **overrides) -> Mixer:
    """The one constructor: ``build_mixer("mamba2", 256, d_state=64)``.

    Unknown names and unknown or mistyped overrides raise, naming the valid ones.
    """
    cls = MIXERS[name]
    cfg = build_config(cls.Config, overrides, where=f"mixer {name!r}")
    return cls(d_model, cfg, layer_idx=layer_idx, impl=impl)
