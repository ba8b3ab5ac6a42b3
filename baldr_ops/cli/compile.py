"""`baldr-ops compile`: argument parsing and rendering; the work is in baldr_ops.compile."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Compile a model with MAX ahead of time, so `launch` starts without compiling.

The engine options come from the same planner as `launch` (same patches, environment, guard-derived
options), so the graphs compiled here are the ones launch asks for; the compile fills MAX's compile
cache on this machine. --export DIR also writes a portable bundle (MAX's precompiled graphs plus a
manifest: MAX version, device, model hashes, compile options) that `launch --precompiled DIR` or
`compile --import DIR` use on another machine or a clean cache, only when the manifest matches.
"""

EPILOG = """\
examples:
  baldr-ops compile                                  # the demo model, into this machine's cache
  baldr-ops compile --export /srv/bundles/smollm2    # and write a bundle
  baldr-ops launch --precompiled /srv/bundles/smollm2    # elsewhere: start without compiling
  baldr-ops compile --check                          # is the cache warm for the demo model?
  baldr-ops compile --check --import DIR             # is this bundle intact and usable here?
  baldr-ops compile --target cuda:sm_121 --max-batch-size 4 --export DIR   # a GB10 bundle, built on a CPU box
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("compile", help="compile a model ahead of time; export/import precompiled bundles",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="DIR", help="local model directory (default: the embedded demo model)")
    p.add_argument("--served-name", metavar="NAME", help="model name (default: the directory name)")
    p.add_argument("--devices", help="MAX devices: cpu, gpu, gpu:0,1 (default: gpu when present, else cpu)")
    p.add_argument("--quantization-encoding", metavar="ENC", help="MAX weight encoding (default: from the weights)")
    p.add_argument("--max-length", type=int, metavar="TOKENS", help="maximum sequence length")
    p.add_argument("--max-batch-size", type=int, metavar="N", help="maximum batch size")
    p.add_argument("--floor", default="8G", metavar="SIZE", help="memory always left to the OS (default 8G)")
    p.add_argument("--guard", default="auto", choices=("auto", "host-sampling", "greedy", "off"),
                   help="sampling guard, as for launch (host-sampling changes the compiled sampler)")
    p.add_argument("--shim", default="auto", choices=("auto", "on", "off"), help="preload the shim, as for launch")
    p.add_argument("--memguard", default="auto", choices=("auto", "on", "off", "dry-run"),
                   help="the load guard while MAX loads the weights, as for launch (default auto: on with a "
                        "unified-memory GPU, dry-run elsewhere)")
    p.add_argument("--load-floor", metavar="SIZE", help="MemFree floor while loading (default scaled to the machine)")
    p.add_argument("--force", action="store_true", help="compile even when preflight says the model does not fit")
    p.add_argument("--export", metavar="DIR", help="also write a precompiled bundle to DIR (must not exist)")
    p.add_argument("--import", dest="import_dir", metavar="DIR",
                   help="use a bundle: verified, and used only if its manifest matches (else compiles normally)")
    p.add_argument("--payload", default="auto", choices=("auto", "mefs", "cache"),
                   help="what a bundle carries: MAX's exported graphs (mefs, MAX >= 26.7) or the compile "
                        "cache (default auto: mefs where MAX can)")
    p.add_argument("--target", metavar="cuda:sm_XY",
                   help="cross-compile for a GPU this machine lacks (MAX virtual devices), e.g. cuda:sm_121 for "
                        "GB10; needs --export and --max-batch-size; experimental: not yet tried on the real GPU")
    p.add_argument("--check", action="store_true",
                   help="compile nothing: say whether the cache is warm (and, with --import, whether the bundle "
                        "is intact and matches); exit 0 if warm/usable, 1 if not")
    p.add_argument("--verbose", "-v", action="store_true", help="stream MAX's log lines too")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("max_args", nargs=argparse.REMAINDER, help="after --: extra arguments for MAX (as for launch)")
    p.set_defaults(func=run)


def _request(args):
    from pathlib import Path

    from baldr_ops.plan import validate
    from baldr_ops.plan.model import LaunchRequest

    extra = [a for a in args.max_args if a != "--"] if args.max_args else []
    validate.engine_values(args.devices, args.max_length, args.max_batch_size)
    return LaunchRequest(model=Path(args.model) if args.model else None, served_name=args.served_name,
                         devices=args.devices, quantization_encoding=args.quantization_encoding,
                         max_length=args.max_length, max_batch_size=args.max_batch_size, floor=args.floor,
                         guard=args.guard, shim=args.shim, force=args.force, memguard=args.memguard,
                         load_floor=args.load_floor, extra_args=extra)


def run(args) -> int:
    from pathlib import Path

    from baldr_ops.cli.progress import ConsoleReporter
    from baldr_ops.compile.service import compile_model
    from baldr_ops.engines.max.warmth import describe_warmth

    reporter = ConsoleReporter(verbose=args.verbose)
    reporter.message("preflight")
    report = compile_model(_request(args), export=Path(args.export) if args.export else None,
                           import_dir=Path(args.import_dir) if args.import_dir else None, check=args.check,
                           payload=args.payload, reporter=reporter, target=args.target)
    if args.json:
        print(report.to_json())
    else:
        for note in report.notes:
            print(f"  {note}")
        options = ", ".join(f"{k}={v}" for k, v in report.options.items() if v not in (None, False))
        print(f"model     {report.served_name} ({report.model})")
        print(f"options   {options}; MAX {report.max_version}")
        if report.action != "checked":
            times = ", ".join(f"{k} {v:.1f} s" for k, v in report.compile_times.items())
            print(f"{report.action:<9} in {report.seconds:.1f} s (MAX compile: {times or 'n/a'})")
        if report.action == "imported":
            how = ("seeded into the cache: launch starts warm" if report.bundle_payload == "cache" else
                   f"loads here without compiling: baldr-ops launch --precompiled {report.bundle}")
            print(f"bundle    {report.bundle} ({report.bundle_payload}; {how})")
        elif report.bundle:
            state = {True: "usable here", False: "not usable here", None: "written"}[report.bundle_used]
            print(f"bundle    {report.bundle} ({report.bundle_payload}; {state})")
        print(f"cache     {describe_warmth(report.cache_warm)} in {report.cache_dir}")
    if args.check:
        ok = report.bundle_used if args.import_dir else report.cache_warm
        return 0 if ok else 1
    return 0
