"""The autotune pruning of the gated delta rule kernels: pipeline depth by the bytes each stage
holds (measured for sm_90 with kernels.sm90_check), and 8 warps alone for fp32 inputs."""
import pytest
import torch
import triton

from kernels.gated_delta_rule.blocks import prune_fp32_warps, prune_state_pass, state_pass_stages


def _args(K, qk=torch.bfloat16, w=torch.bfloat16, bwd=True):
    args = {"K": K, "k": torch.empty(1, dtype=qk), "w": torch.empty(1, dtype=w)}
    if bwd:
        args["q"] = torch.empty(1, dtype=qk)
    return args


@pytest.mark.parametrize("K, qk, w, bwd, stages", [
    (128, torch.bfloat16, torch.bfloat16, True, 3),   # 181 KB at 3 stages
    (128, torch.float32, torch.bfloat16, True, 2),    # 246 KB at 3 stages: over 227 KB
    (128, torch.float32, torch.float32, True, 2),     # 279 KB at 3 stages
    (128, torch.float32, torch.bfloat16, False, 3),   # fwd_h: k, w only (164 KB)
    (256, torch.bfloat16, torch.bfloat16, True, 2),   # 221 KB at 2 stages
    (256, torch.float32, torch.bfloat16, True, 1),    # 287 KB at 2 stages
])
def test_state_pass_stages_follow_the_bytes_per_stage(K, qk, w, bwd, stages):
    assert state_pass_stages(_args(K, qk, w, bwd)) == stages


CONFIGS = [triton.Config({"BV": 64}, num_warps=w) for w in (4, 8)]  # chunk_h's: the stages come from pruning


def test_prune_state_pass_keeps_the_stage_count_and_fp32_drops_four_warps():
    kept = prune_state_pass(CONFIGS, {**_args(128), "V": 128})
    assert {(c.num_warps, c.num_stages) for c in kept} == {(4, 3), (8, 3)}
    kept = prune_state_pass(CONFIGS, {**_args(128, torch.float32, torch.float32), "V": 128}, PREC="ieee")
    assert [(c.num_warps, c.num_stages) for c in kept] == [(8, 2)]


def test_prune_fp32_warps_leaves_low_precision_alone():
    assert prune_fp32_warps(CONFIGS, {"PREC": None}) == CONFIGS
    assert all(c.num_warps == 8 for c in prune_fp32_warps(CONFIGS, {"PREC": "ieee"}))
