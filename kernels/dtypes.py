"""Precision rules every kernel and mixer shares."""
import torch


def state_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """Recurrent states and the scans that build them run in fp32 (fp64 when the inputs are
    fp64), whatever the activations' dtype: bf16 accumulation over thousands of tokens drifts."""
    return torch.float64 if dtype == torch.float64 else torch.float32
