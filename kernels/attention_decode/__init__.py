from kernels.attention_decode.naive import attention_decode

__all__ = ["attention_decode"]
