from kernels.ssd.naive import naive_chunk_ssd, naive_recurrent_ssd, ssd_step

__all__ = ["naive_chunk_ssd", "naive_recurrent_ssd", "ssd_step"]
