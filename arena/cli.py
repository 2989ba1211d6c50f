"""arena: compare sequence mixers (Mamba, Mamba-2, Gated DeltaNet, mLSTM, attention) on quality,
speed and memory.

Subcommands import torch lazily, so `arena --help` is instant."""
from __future__ import annotations

import argparse
import sys
import time

EXAMPLES = """examples:
  arena list                      the registered mixers, their implementations and sizes
  arena list --d-model 512 --seq-len 4096
  arena demo                      build every mixer, check decode == forward, show sizes
"""


def _mixer_rows(d_model: int, seq_len: int) -> list[dict]:
    from architectures import MIXERS, build_mixer

    rows = []
    for name in MIXERS.names():
        mixer = build_mixer(name, d_model)
        rows.append({
            "mixer": name,
            "impls": ",".join(type(mixer).IMPLS),
            "runs": mixer.impl,
            "params": sum(p.numel() for p in mixer.parameters()),
            "state": mixer.state_size(seq_len),
            "GFLOPs": mixer.flops(seq_len) / 1e9,
        })
    return rows


def _print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    cells = [[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def cmd_list(args: argparse.Namespace) -> int:
    print(f"mixers at d_model={args.d_model}; state (scalars per sequence) and forward GFLOPs "
          f"per sequence at seq_len={args.seq_len}:")
    _print_table(_mixer_rows(args.d_model, args.seq_len))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Until the task runners land: build a tiny model of every mixer and one hybrid, check that
    recurrent decoding reproduces the parallel forward, and show their sizes."""
    import torch

    from architectures import MIXERS, build_model

    torch.manual_seed(0)
    cmd_list(argparse.Namespace(d_model=args.d_model, seq_len=args.seq_len))
    print("\ndecode == forward check (float64, 2 layers, 64 tokens):")
    tokens = torch.randint(0, 256, (2, 64))
    for name in MIXERS.names() + ["hybrid"]:
        spec = {"pattern": ["gated_deltanet", "attention"]} if name == "hybrid" else {"mixer": name}
        model = build_model(256, args.d_model, 2, **spec).double().eval()
        start = time.perf_counter()
        with torch.no_grad():
            full = model(tokens)
            logits, state = model.prefill(tokens[:, :1])
            steps = [logits]
            for t in range(1, tokens.shape[1]):
                lt, state = model.step(tokens[:, t], state)
                steps.append(lt[:, None])
        err = ((torch.cat(steps, 1) - full).norm() / full.norm()).item()
        ok = "ok" if err < 1e-9 else "MISMATCH"
        print(f"  {name:16s} params {model.num_params():>9,d}  rel err {err:.1e}  {ok}  "
              f"({time.perf_counter() - start:.2f}s)")
        if ok != "ok":
            return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arena", description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, fn, help_ in [("list", cmd_list, "list the registered mixers"),
                            ("demo", cmd_demo, "the end-to-end demo (CPU, a few seconds)")]:
        p = sub.add_parser(name, help=help_, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--d-model", type=int, default=64, help="model width (default 64)")
        p.add_argument("--seq-len", type=int, default=2048, help="sequence length for sizes (default 2048)")
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
