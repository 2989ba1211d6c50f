from kernels.mlstm.naive import mlstm_step, naive_chunk_mlstm, naive_recurrent_mlstm

__all__ = ["mlstm_step", "naive_chunk_mlstm", "naive_recurrent_mlstm"]
