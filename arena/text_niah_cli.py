"""Text needle-in-a-haystack (RULER-style) on an arena checkpoint or a local Hugging Face causal
LM; writes one eval Record (task "text_niah") to the store.

    python -m arena.text_niah_cli run.safetensors --lengths 1k,2k --depths 0,0.5,1
    python -m arena.text_niah_cli run.safetensors --variant multikey --haystack stdlib --samples 8
    python -m arena.text_niah_cli --hf ~/models/my-llm --lengths 4k,8k --keys words --values uuids
"""
from __future__ import annotations

import argparse
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    from tasks.text_niah import KINDS, VARIANTS

    p = argparse.ArgumentParser(prog="arena niah", description=__doc__.split("\n\n")[0],
                                epilog="examples:\n" + __doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="an arena checkpoint (arena.checkpoint.save_checkpoint)")
    p.add_argument("--hf", metavar="DIR", help="a local Hugging Face causal LM directory instead (needs transformers)")
    p.add_argument("--tokenizer", default="byte", help="for arena checkpoints: 'byte' (default) or a "
                   "tokenizers JSON file (the cached BPE the model was trained with)")
    p.add_argument("--lengths", default="512,1k", help="comma-separated prompt lengths in tokens (default 512,1k)")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="comma-separated needle depths in [0, 1]")
    p.add_argument("--variant", default="single", choices=VARIANTS)
    p.add_argument("--haystack", default="noise", help="noise (RULER filler), stdlib, or a text file / directory")
    p.add_argument("--keys", default="words", choices=KINDS)
    p.add_argument("--values", default="numbers", choices=KINDS)
    p.add_argument("--num-needles", type=int, help="needles (default 1 for single, else 4)")
    p.add_argument("--samples", type=int, default=4, help="prompts per cell (default 4)")
    p.add_argument("--max-new-tokens", type=int, help="default: the answer's length plus 16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--results", default="results", metavar="DIR", help="the results store (default results/)")
    p.add_argument("--no-store", action="store_true", help="print the metrics only")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.hf is None):
        parser.error("give exactly one of CHECKPOINT or --hf DIR")
    try:
        from arena.bench import parse_size

        lengths = [parse_size(t) for t in args.lengths.split(",") if t]
        depths = [float(t) for t in args.depths.split(",") if t]
    except ValueError as e:
        parser.error(f"--lengths/--depths: {e}")
    from arena.records import Record, content_id, environment_info, utc_now
    from tasks.text_niah import run_text_niah
    from tasks.text_niah_models import arena_model_fn, hf_model_fn

    started, t0 = utc_now(), time.perf_counter()
    if args.hf:
        model_fn, tok = hf_model_fn(args.hf, device=args.device)
        source, mixer, impl, run_cfg = f"hf:{args.hf}", "hf", "transformers", {}
        ident = args.hf
    else:
        from arena.checkpoint import load_checkpoint
        from arena.config import RunConfig

        model, run_cfg = load_checkpoint(args.checkpoint, device=args.device)
        cfg = RunConfig.from_dict(run_cfg)
        if args.tokenizer == "byte":
            tok = "byte"
        else:
            import tokenizers

            tok = tokenizers.Tokenizer.from_file(args.tokenizer)
        model_fn = arena_model_fn(model, args.device)
        source, mixer = args.checkpoint, cfg.mixer_label
        impl = model.impl_label()
        ident = cfg.run_id
    settings = {"source": source, "model_run_id": ident, "tokenizer": args.tokenizer if not args.hf else "hf",
                "lengths": lengths, "depths": depths, "variant": args.variant, "haystack": args.haystack,
                "key_type": args.keys, "value_type": args.values, "num_needles": args.num_needles,
                "num_samples": args.samples, "max_new_tokens": args.max_new_tokens}
    run_id = f"{content_id(settings)}-s{args.seed}"
    print(f"text_niah {args.variant} on {source}: lengths {lengths} x depths {depths}, {args.samples} samples/cell")
    metrics = run_text_niah(model_fn, tok, lengths, depths, args.variant, args.samples, args.seed,
                            haystack=args.haystack, key_type=args.keys, value_type=args.values,
                            num_needles=args.num_needles, max_new_tokens=args.max_new_tokens,
                            progress=lambda s: print("  " + s, flush=True))
    for k in ("exact_match", "ruler_score"):
        print(f"{k:12s} {metrics[k]:.4f}")
    if args.no_store:
        return 0
    from arena.store import Store

    env = environment_info()
    record = Record(run_id=run_id, kind="eval", status="ok", task="text_niah", mixer=mixer, impl=impl,
                    device=args.device, seed=args.seed, config={"text_niah": settings, "model": run_cfg},
                    metrics=metrics, started_at=started, wall_time_s=time.perf_counter() - t0,
                    extra={"primary_metric": "exact_match", "higher_is_better": True}, **env)
    path = Store(args.results).write(record)
    print(f"record written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
