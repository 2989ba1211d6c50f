from kernels.selective_scan.naive import (
    naive_chunk_selective_scan,
    naive_recurrent_selective_scan,
    selective_scan_step,
)

__all__ = ["naive_chunk_selective_scan", "naive_recurrent_selective_scan", "selective_scan_step"]
