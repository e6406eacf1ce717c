"""Command line: ``probes models | run ANALYSIS.toml | report RUN_DIR | sweep SWEEP.toml``.

Every user-facing failure is a :class:`ProbesError`: printed as one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from probes.core.errors import ProbesError

EXIT_BAD_INPUT = 2


def cmd_models(args: argparse.Namespace) -> None:
    """List the packaged models: cached or not, size on disk, licence."""
    from probes.models.cache import cache_root, cache_status, cached_model_dir
    from probes.models.registry import PACKAGED

    rows = []
    for spec in PACKAGED.values():
        status = cache_status(spec.name)
        model_dir = cached_model_dir(spec.name)
        size = sum(f.stat().st_size for f in model_dir.iterdir()) / 1e6 if status != "not cached" else None
        installed = "installed" if spec.is_installed() else f"not installed ({spec.install})"
        rows.append((spec.name, status, "-" if size is None else f"{size:,.0f} MB", installed, spec.licence, spec.source))
    header = ("name", "cache", "size", "package", "licence", "source")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header) - 1)]
    for row in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    print(f"\ncache: {cache_root()} (set PROBES_CACHE to move it)")


def cmd_run(args: argparse.Namespace) -> None:
    """Run an analysis spec, write the run directory and its report, print a one-screen summary."""
    import time

    from probes.run.pipeline import run_analysis
    from probes.run.spec import AnalysisSpec
    from probes.report.render import render

    spec = AnalysisSpec.from_toml(args.analysis)
    for key in ("model", "prompts", "n", "seed"):
        value = getattr(args, key)
        if value is not None:
            setattr(spec, key, value)
    if args.prompts is not None:
        spec.task = None
    spec.check("command line")
    out = Path(args.out or Path("reports") / f"{Path(args.analysis).stem}-{Path(spec.model).name}")
    start = time.perf_counter()
    _, claimed = run_analysis(spec, out)
    index = render(out)
    print(f"\n{spec.title or Path(args.analysis).stem}: {spec.model}, {spec.task or spec.prompts}, "
          f"{time.perf_counter() - start:.0f} s")
    width = max((len(r.verdict) for r in claimed), default=0)
    for result in claimed:
        print(f"  {result.verdict.ljust(width)}  {result.sentence.rsplit(':', 1)[0]}")
    print(f"report: {index}")


def cmd_report(args: argparse.Namespace) -> None:
    """Re-render a run directory's index.html from its results (no model needed)."""
    from probes.report.render import render

    print(f"report: {render(args.run_dir)}")


def cmd_sweep(args: argparse.Namespace) -> None:
    """Run a replication sweep's missing cells on Ray and aggregate them (Ray is imported only here)."""
    import os

    try:
        from probes.sweep.driver import run_sweep
    except ModuleNotFoundError as err:
        raise ProbesError(f"`probes sweep` needs {err.name}: pip install -e '.[sweep]' (or make setup)") from None
    from probes.sweep.spec import SweepSpec

    sweep = SweepSpec.from_toml(args.sweep)
    out = Path(args.out or Path("reports") / sweep.path.stem)
    result = run_sweep(sweep, out, args.address or os.environ.get("RAY_ADDRESS"), " ".join(["probes", *sys.argv[1:]]))
    for entry in result.claims:
        print(f"  {entry.label.ljust(8)}  {entry.name}: {entry.split}")
    print(f"report: {out / 'index.html'}")
    if result.failed:
        first = result.failed[0]
        raise ProbesError(f"{len(result.failed)} of {len(result.outcomes)} cells failed (first: {first.name}: "
                          f"{first.error}); see {out / 'sweep.json'}, fix, rerun to finish only those")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probes", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="list packaged models, whether each is cached, size and licence")
    models.set_defaults(func=cmd_models)
    run = sub.add_parser("run", help="run an analysis spec (analyses/*.toml) and write its report")
    run.add_argument("analysis", help="path of the analysis TOML")
    run.add_argument("--model", help="override the spec's model (packaged name, local directory or hub name)")
    run.add_argument("--prompts", help="a JSONL file of your own minimal pairs (replaces the spec's task)")
    run.add_argument("--n", type=int, help="number of prompts to generate")
    run.add_argument("--seed", type=int, help="seed for prompt generation and bootstrap")
    run.add_argument("--out", help="run directory (default reports/ANALYSIS-MODEL)")
    run.set_defaults(func=cmd_run)
    report = sub.add_parser("report", help="re-render RUN_DIR/index.html from its results")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)
    sweep = sub.add_parser("sweep", help="replicate an analysis over a grid of seeds/templates/models on Ray")
    sweep.add_argument("sweep", help="path of the sweep TOML (analyses/*_sweep.toml)")
    sweep.add_argument("--out", help="sweep directory (default reports/SWEEP)")
    sweep.add_argument("--address", help="a Ray cluster's address (default RAY_ADDRESS, else Ray embedded here)")
    sweep.set_defaults(func=cmd_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ProbesError as err:
        print(f"probes: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("probes: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
