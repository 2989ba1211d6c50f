"""Kernels, one folder per op: ``naive.py`` (the paper's recurrence: the ground truth and the
pure-PyTorch chunked form), Triton forms beside it. Kernels know nothing of modules."""
