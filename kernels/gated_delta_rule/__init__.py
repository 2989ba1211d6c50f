from kernels.gated_delta_rule.naive import (
    gated_delta_rule_step,
    naive_chunk_gated_delta_rule,
    naive_recurrent_gated_delta_rule,
)

__all__ = ["gated_delta_rule_step", "naive_chunk_gated_delta_rule", "naive_recurrent_gated_delta_rule"]
