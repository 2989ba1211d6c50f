from kernels.short_conv.naive import causal_conv1d, causal_conv1d_step

__all__ = ["causal_conv1d", "causal_conv1d_step"]
