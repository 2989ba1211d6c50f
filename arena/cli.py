"""arena: compare sequence mixers (Mamba, Mamba-2, Gated DeltaNet, mLSTM, attention) on quality,
speed and memory.

Subcommands import torch lazily, so `arena --help` is instant."""
from __future__ import annotations

import argparse
import sys

EXAMPLES = {
    "list": "arena list\n  arena list --d-model 512 --seq-len 4096",
    "run": ("arena run --task mqar --mixer mamba2\n"
            "  arena run --task mqar --mixer attention --set model.d_model=64 --set model.mlp=false \\\n"
            "      --set task.seq_len=128 --set task.num_kv_pairs=8 --set optim.lr=3e-3\n"
            "  arena run --task niah --pattern gated_deltanet,gated_deltanet,attention --set mixer.attention.num_heads=2\n"
            "  arena run --task lm --mixer gated_deltanet --save-checkpoint   # then: arena eval CHECKPOINT"),
    "sweep": ("arena sweep demo\n  arena sweep zoology_mqar --preset cpu --workers 2\n"
              "  arena sweep zoology_mqar --preset gpu --executor ray --address auto\n"
              "  arena sweep zoology_mqar --retry-failed --set optim.max_steps=200"),
    "leaderboard": "arena leaderboard\n  arena leaderboard --task mqar --results my_results",
    "report": "arena report\n  arena report --results my_results --out /tmp/site",
    "demo": "arena demo\n  arena demo --results /tmp/arena_demo",
    "bench": ("arena bench --preset cpu\n"
              "  arena bench --mixers attention,mamba2 --impl reference --lengths 512,1k,4k --pass fwd,decode \\\n"
              "      --batch-policy tokens --tokens 32k --dtype fp32 --d-model 256 --results my_results\n"
              "  arena bench --preset gpu --results results_gpu --write-baseline gpu_baseline.json\n"
              "  arena bench --compare gpu_baseline.json --threshold 10% --results results_gpu"),
    "determinism": ("arena determinism gated_deltanet --d-model 128 --batch 128 --seq-len 256\n"
                    "  TRITON_INTERPRET=1 arena determinism mamba2 --d-model 32 --batch 2 --seq-len 40   # CPU"),
    "niah": ("arena niah results/checkpoints/RUN_ID.safetensors --lengths 512,1k --depths 0,0.5,1\n"
             "  arena niah --hf /path/to/local/hf-model --variant multikey --values uuids"),
    "eval": ("arena eval results/checkpoints/RUN_ID.safetensors\n"
             "  arena eval run.safetensors --tasks arena_mc,arena_ppl,arena_niah --limit 8 --batch-size 4\n"
             "  arena eval run.safetensors --tasks my_task --include-path my_tasks/\n"
             "  arena eval run.safetensors --tasks hellaswag --online   # lm-eval's standard tasks, from the hub"),
}


class UsageError(Exception):
    """A bad value on the command line: printed as one line, exit code 2."""


def cmd_list(args) -> int:
    import dataclasses

    from architectures import MIXERS, build_mixer
    from arena.recipes import RECIPES
    from tasks import TASKS

    print(f"mixers (d_model={args.d_model}; state = scalars per sequence, GFLOPs = forward per sequence "
          f"at seq_len={args.seq_len}):")
    for name in MIXERS.names():
        m = build_mixer(name, args.d_model)
        params = sum(p.numel() for p in m.parameters())
        print(f"  {name:16s} impls: {','.join(type(m).IMPLS):17s} runs here: {m.impl:10s} params {params:>9,d}  "
              f"state {m.state_size(args.seq_len):>10,d}  GFLOPs {m.flops(args.seq_len) / 1e9:8.3f}")
        keys = ", ".join(f"{f.name}={getattr(m.cfg, f.name)!r}" for f in dataclasses.fields(m.cfg))
        print(f"  {'':16s} config: {keys}")
    print("\ntasks (primary metric):")
    for name in TASKS.names():
        print(f"  {name:18s} {TASKS[name].primary_metric}")
    print("\nrecipes (arena sweep NAME --preset cpu|gpu):")
    for name in RECIPES.names():
        doc = (RECIPES[name].__doc__ or "").strip().split("\n")[0]
        print(f"  {name:18s} {doc}")
    return 0


def _run_config(args):
    from arena.config import RunConfig, apply_overrides

    if (args.mixer is None) == (args.pattern is None):
        raise UsageError("give exactly one of --mixer NAME or --pattern NAME,NAME,...")
    pattern = tuple(args.pattern.split(",")) if args.pattern else None
    base = {"model": {"mixer": args.mixer, "pattern": pattern}, "task": {"name": args.task},
            "seed": args.seed, "device": args.device}
    return RunConfig.from_dict(apply_overrides(base, args.set or []))


def cmd_run(args) -> int:
    from arena.execute import execute
    from arena.store import Store

    cfg = _run_config(args)
    store = Store(args.results)
    if store.status_of(cfg.run_id) == "ok":
        print(f"run {cfg.run_id} is already in {args.results} with status ok; nothing to do"
              + (" (no new checkpoint: use another --results to train it again)" if args.save_checkpoint is not None else ""))
        return 0
    print(f"run {cfg.run_id}: {cfg.task} with {cfg.mixer_label} (d_model {cfg.model.d_model}, "
          f"{cfg.model.n_layers} layers), seed {cfg.seed}")
    ckpt_dir = None
    if args.save_checkpoint is not None:
        ckpt_dir = args.save_checkpoint or f"{args.results}/checkpoints"
    record = execute(cfg, store, checkpoint_dir=ckpt_dir)
    print(f"status {record.status} in {record.wall_time_s:.1f}s on {record.device} (impl {record.impl})")
    for key, value in record.metrics.items():
        print(f"  {key:32s} {value:.4f}")
    if record.error:
        print(record.error.strip().splitlines()[-1], file=sys.stderr)
    if "checkpoint" in record.extra:
        print(f"checkpoint {record.extra['checkpoint']}   (arena eval {record.extra['checkpoint']})")
    print(f"record written to {args.results}/")
    return 0 if record.status == "ok" else 1


def _sweep(configs, args) -> int:
    from arena.sweep import run_sweep

    summary = run_sweep(configs, results=args.results, executor=args.executor, workers=args.workers,
                        address=args.address, retry_failed=args.retry_failed)
    print(summary)
    return 0


def cmd_sweep(args) -> int:
    from arena.config import RunConfig, apply_overrides
    from arena.recipes import build_recipe

    configs = build_recipe(args.recipe, args.preset)
    if args.set:
        configs = [RunConfig.from_dict(apply_overrides(c.to_dict(), args.set)) for c in configs]
    print(f"recipe {args.recipe} ({args.preset}): {len(configs)} runs -> {args.results}/")
    return _sweep(configs, args)


def cmd_leaderboard(args) -> int:
    from arena.leaderboard import format_table, leaderboard
    from arena.store import load

    print(format_table(leaderboard(load(args.results), task=args.task)))
    return 0


def cmd_report(args) -> int:
    from arena.report.site import build_site

    index = build_site(args.results, args.out)
    print(f"dashboard: {index}   (open it in a browser; it works offline)")
    return 0


def cmd_demo(args) -> int:
    from arena.recipes import build_recipe

    configs = build_recipe("demo")
    print(f"arena demo: {len(configs)} runs of MQAR, one per mixer, on this machine -> {args.results}/")
    args.executor, args.address, args.retry_failed = "local", None, False
    _sweep(configs, args)
    cmd_leaderboard(argparse.Namespace(results=args.results, task="mqar"))
    if not args.skip_bench:  # the throughput-versus-length figure of the dashboard
        print("\narena demo: throughput against sequence length (arena bench --preset cpu, a few minutes)")
        cmd_bench(build_parser().parse_args(["bench", "--preset", "cpu", "--results", args.results]))
    print(f"\nrecords: {args.results}/   (load them with arena.store.load({args.results!r}))")
    out = args.out or ("dashboards" if args.results == "results" else f"{args.results}/dashboards")
    return cmd_report(argparse.Namespace(results=args.results, out=out))


def cmd_bench(args) -> int:
    import torch

    from arena import bench
    from arena.bench_baselines import compare, current_rows, parse_threshold, write_baseline
    from arena.store import Store

    sweeping = args.preset or args.mixers
    if not sweeping and not args.compare:
        raise UsageError("give --preset cpu|gpu, --mixers NAME,... or --compare BASELINE.json")
    preset = dict(bench.PRESETS[args.preset or ("gpu" if torch.cuda.is_available() else "cpu")])
    def split(text):
        return tuple(filter(None, text.split(",")))
    given = {"mixers": args.mixers and split(args.mixers), "impls": args.impl and split(args.impl),
             "lengths": args.lengths and tuple(bench.parse_size(t) for t in split(args.lengths)),
             "passes": args.passes and split(args.passes), "batch_policy": args.batch_policy,
             "tokens": args.tokens and bench.parse_size(args.tokens), "batch_size": args.batch_size,
             "dtype": args.dtype, "d_model": args.d_model, "warmup": args.warmup, "reps": args.reps}
    opts = {**preset, **{k: v for k, v in given.items() if v is not None}}
    if args.batch_size is not None and args.batch_policy is None:
        opts["batch_policy"] = "fixed"
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if sweeping:
        try:
            rows = bench.plan(opts["mixers"], opts["impls"], opts["lengths"], opts["passes"],
                              batch_policy=opts["batch_policy"], tokens=opts["tokens"],
                              batch_size=opts["batch_size"], dtype=opts["dtype"], d_model=opts["d_model"],
                              device=device, mixer_overrides=opts["mixer_overrides"])
        except ValueError as e:
            raise UsageError(str(e)) from e
        print(f"arena bench: {len(rows)} rows on {device} ({opts['dtype']}, d_model {opts['d_model']}, "
              f"{torch.get_num_threads()} threads) -> {args.results}/")
        records = bench.sweep(rows, Store(args.results), warmup=opts["warmup"], reps=opts["reps"],
                              roofline_path=args.roofline_cache, retry_crashed=args.retry_crashed)
        print(f"{sum(r.status == 'ok' for r in records)} ok, {sum(r.status != 'ok' for r in records)} not ok")
    if args.write_baseline:
        path = write_baseline(args.results, args.write_baseline, str(device), opts["dtype"])
        print(f"baseline written to {path}")
    if args.compare:
        import json
        from pathlib import Path

        try:
            code, report = compare(json.loads(Path(args.compare).read_text()), current_rows(args.results),
                                   parse_threshold(args.threshold))
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(f"--compare {args.compare}: {e}") from e
        print(report)
        return code
    return 0


def cmd_determinism(args) -> int:
    import torch

    from kernels.triton_utils import interpreting

    if not torch.cuda.is_available() and not interpreting():
        raise UsageError("no CUDA device: the Triton kernels need one, or TRITON_INTERPRET=1 (small shapes) to "
                         "check the code around them on the CPU")
    from architectures.mixer import ImplUnavailableError
    from arena.determinism import check, mixer_run

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        run = mixer_run(args.mixer, args.d_model, args.batch, args.seq_len, device)
    except ImplUnavailableError as err:
        raise UsageError(f"{err}. arena determinism checks Triton kernels: pick a mixer that has them "
                         f"(arena list shows each mixer's implementations)") from err
    report = check(run, reps=args.reps)
    print(f"{args.mixer} d_model {args.d_model}, B {args.batch}, T {args.seq_len}, {device}:\n{report}")
    return 0 if report.deterministic and report.finite_with_nan_fill else 1


def cmd_eval(args) -> int:
    import time
    from pathlib import Path

    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise UsageError(f"checkpoint {args.checkpoint}: no such file")
    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks:
        raise UsageError("--tasks: give one or more comma-separated lm-eval task names")
    for d in args.include_path or []:
        if not Path(d).is_dir():
            raise UsageError(f"--include-path {d}: no such directory")
    if not args.online:  # before lm_eval, datasets and huggingface_hub read them at import
        import os

        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        from arena import lm_eval_adapter as lea
    except ImportError as err:
        raise UsageError(f"arena eval needs lm-eval: pip install 'arena[eval]' ({err})") from err
    import lm_eval

    from arena.bench_timing import device_name
    from arena.config import RunConfig
    from arena.records import Record, content_id, environment_info, utc_now
    from arena.store import Store

    try:
        lm = lea.ArenaLM(pretrained=str(ckpt), batch_size=args.batch_size, device=args.device,
                         max_length=args.max_length)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"checkpoint {args.checkpoint}: {err}") from err
    manager = lea.task_manager(args.include_path or [], tasks)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UsageError(f"--tasks: unknown task {unknown[0]!r}; local tasks: {', '.join(lea.LOCAL_TASKS)} "
                         f"(lm-eval's own: `lm_eval ls tasks`)")
    limit = None if args.limit is None else (int(args.limit) if args.limit.is_integer() else args.limit)
    started, t0 = utc_now(), time.perf_counter()
    print(f"eval {ckpt}: {', '.join(tasks)} (max_length {lm.max_length}, batch {lm.batch_size}, "
          f"device {lm._device}{', limit ' + str(limit) if limit is not None else ''})")
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=manager,
                                      bootstrap_iters=args.bootstrap_iters, log_samples=False)
    wall = time.perf_counter() - t0
    from lm_eval.utils import make_table

    print(make_table(results))
    cfg = RunConfig.from_dict(lm.config)
    key = {"checkpoint": lea.file_sha256(ckpt), "tasks": tasks, "limit": limit, "max_length": lm.max_length}
    env = environment_info()
    record = Record(
        run_id=f"eval-{content_id(key)}-s{cfg.seed}", kind="eval", status="ok",
        task="lm_eval", mixer=cfg.mixer_label,
        impl=lm.model.impl_label(),
        device=device_name(lm._device), seed=cfg.seed, config=lm.config, metrics=lea.flatten_results(results),
        git_commit=env["git_commit"], git_dirty=env["git_dirty"], versions={**env["versions"],
        "lm_eval": getattr(lm_eval, "__version__", "")}, started_at=started, wall_time_s=wall,
        extra={"checkpoint": str(ckpt.resolve()), "checkpoint_run_id": cfg.run_id, "lm_eval_tasks": tasks,
               "limit": limit, "max_length": lm.max_length, "batch_size": lm.batch_size,
               "tokenizer": lm.tokenizer_name, "n_samples": {t: v.get("effective", v.get("original"))
                                                             for t, v in results.get("n-samples", {}).items()}},
    )
    Store(args.results).write(record)
    print(f"record {record.run_id} written to {args.results}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    all_examples = "examples:\n  " + "\n  ".join(EXAMPLES.values())
    parser = argparse.ArgumentParser(prog="arena", description=__doc__.split("\n\n")[0],
                                     epilog=all_examples, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, fn, help_):
        p = sub.add_parser(name, help=help_, description=help_, epilog="examples:\n  " + EXAMPLES[name],
                           formatter_class=fmt)
        p.set_defaults(func=fn)
        return p

    def results_opt(p):
        p.add_argument("--results", default="results", metavar="DIR", help="the results store (default: results/)")

    def out_opt(p):
        p.add_argument("--out", default="dashboards", metavar="DIR", help="the dashboard site (default: dashboards/)")

    p = add("list", cmd_list, "list the mixers (with configs and implementations here), tasks and recipes")
    p.add_argument("--d-model", type=int, default=64, help="model width for the sizes shown (default 64)")
    p.add_argument("--seq-len", type=int, default=2048, help="sequence length for the sizes shown (default 2048)")

    p = add("run", cmd_run, "train and evaluate one configuration, writing its record to the store")
    p.add_argument("--task", required=True, help="a task name (arena list shows them)")
    p.add_argument("--mixer", help="one mixer for every layer")
    p.add_argument("--pattern", help="a hybrid: comma-separated mixers, repeated to model.n_layers")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key: model.*, mixer.*, task.*, optim.*, seed, device (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--save-checkpoint", nargs="?", const="", metavar="DIR", help="save the trained model "
                   "(config + weights, safetensors) as DIR/<run_id>.safetensors (default DIR: <results>/checkpoints)")
    results_opt(p)

    p = add("sweep", cmd_sweep, "run a recipe's grid of configurations; resumable (finished runs are skipped)")
    p.add_argument("recipe", help="a recipe name (arena list shows them)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu"], help="recipe scale (default cpu)")
    p.add_argument("--executor", default="local", help="local (worker processes here) or ray")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--workers", type=int, help="concurrent runs (default: one per GPU, else 1)")
    p.add_argument("--retry-failed", action="store_true", help="run again the runs whose last record failed")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key in every run of the recipe")
    results_opt(p)

    p = add("leaderboard", cmd_leaderboard, "per task and setting: each mixer's best over the tuning grid")
    p.add_argument("--task", help="only this task")
    results_opt(p)

    p = add("report", cmd_report, "regenerate the static dashboard site (leaderboards, figures, data) from the store")
    results_opt(p)
    out_opt(p)

    p = add("demo", cmd_demo, "the end-to-end demo: a small MQAR head-to-head of every mixer on this machine, "
            "then their throughput against sequence length")
    p.add_argument("--workers", type=int, default=2, help="concurrent runs (default 2)")
    p.add_argument("--skip-bench", action="store_true", help="leave out the throughput benchmark")
    results_opt(p)
    p.add_argument("--out", metavar="DIR", help="the dashboard site (default: dashboards/, or DIR/dashboards "
                   "when --results DIR is given)")

    p = add("bench", cmd_bench, "throughput, memory and roofline fraction of each mixer against length "
            "(records of kind bench)")
    p.add_argument("--preset", choices=["cpu", "gpu"], help="a standard sweep (flags below override its values)")
    p.add_argument("--mixers", help="comma-separated mixers")
    p.add_argument("--impl", help="comma-separated: reference, triton, auto, or a contender "
                   "(fla, mamba_ssm, mlstm_kernels, flash_attn)")
    p.add_argument("--lengths", help="comma-separated sequence lengths, e.g. 512,1k,4k")
    p.add_argument("--pass", dest="passes", help="comma-separated: fwd, fwdbwd, prefill, decode")
    p.add_argument("--batch-policy", choices=["tokens", "fixed"], help="tokens: B = --tokens // T; fixed: B = --batch-size")
    p.add_argument("--tokens", help="B*T under --batch-policy tokens, e.g. 32k")
    p.add_argument("--batch-size", type=int, help="B under --batch-policy fixed (implies it)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--d-model", type=int)
    p.add_argument("--warmup", type=int, help="untimed calls after the first (timed apart) call")
    p.add_argument("--reps", type=int, help="timed calls (median and IQR)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--retry-crashed", action="store_true",
                   help="measure again the rows that killed an earlier sweep's process (skipped by default)")
    p.add_argument("--roofline-cache", metavar="FILE", help="the roofline cache "
                   "(default $ARENA_ROOFLINE_CACHE or ~/.cache/arena/roofline-<device>.json)")
    p.add_argument("--compare", metavar="BASELINE.json", help="exit 2 when a row of the store is slower than the baseline")
    p.add_argument("--threshold", default="10%", help="slowdown tolerated by --compare (default 10%%)")
    p.add_argument("--write-baseline", metavar="FILE", help="write the store's ok rows as a baseline file")
    results_opt(p)

    p = add("determinism", cmd_determinism, "is a mixer's impl='triton' forward + backward bitwise the same on "
            "identical inputs? names the first kernel launch that differs")
    p.add_argument("mixer", help="a mixer with Triton kernels (arena list shows them)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--reps", type=int, default=4, help="runs compared with the first (default 4)")

    p = sub.add_parser("niah", add_help=False, help="RULER-style text needle-in-a-haystack on a checkpoint or a "
                       "local Hugging Face model (arena niah --help for its options)")
    p.add_argument("args", nargs=argparse.REMAINDER)  # handed whole to arena.text_niah_cli (see main)

    p = add("eval", cmd_eval, "run lm-eval tasks on a checkpoint (offline local tasks by default); "
            "writes a record of kind eval")
    p.add_argument("checkpoint", help="a checkpoint file (arena run --save-checkpoint writes one)")
    p.add_argument("--tasks", default="arena_mc,arena_ppl,arena_niah",
                   help="comma-separated lm-eval tasks (default: the local arena_mc,arena_ppl,arena_niah)")
    p.add_argument("--limit", type=float, help="documents per task (a fraction when < 1)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward (default 8)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--max-length", type=int, help="context window for loglikelihood and rolling perplexity "
                   "(default: the checkpoint's task.seq_len)")
    p.add_argument("--include-path", action="append", metavar="DIR", help="another folder of lm-eval task YAMLs")
    p.add_argument("--bootstrap-iters", type=int, default=0, help="lm-eval bootstrap for stderrs (default 0: off)")
    p.add_argument("--online", action="store_true", help="let lm-eval reach the Hugging Face hub (standard "
                   "tasks); by default HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1")
    results_opt(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    from arena.registry import ConfigError, UnknownNameError

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["niah"]:  # its own parser, --help included
        from arena.text_niah_cli import main as niah_main

        return niah_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, UnknownNameError, ConfigError) as err:
        parser.exit(2, f"arena {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, "\ninterrupted; finished runs are in the store, `arena sweep` again resumes\n")


if __name__ == "__main__":
    sys.exit(main())
