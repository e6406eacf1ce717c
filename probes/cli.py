"""Command line: ``probes models | doctor | run ANALYSIS.toml | report RUN_DIR``.

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


def cmd_doctor(args: argparse.Namespace) -> None:
    """One screen: what is installed (with versions), which models are cached and under which licence, and
    whether the optional pieces (chromium for the browser test, Ray for sweeps, a GPU) are there."""
    import importlib.util
    import shutil
    from importlib import metadata

    from probes.core.provenance import kit_version, package_versions
    from probes.models.cache import cache_root

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    print(f"probes kit {kit_version()}; " + ", ".join(f"{k} {v}" for k, v in package_versions().items()))
    print()
    cmd_models(args)
    converted = sorted(p.name for p in (cache_root() / "hf").glob("*") if p.is_dir())
    print(f"converted Hugging Face checkpoints: {', '.join(converted) or 'none'}")
    free = shutil.disk_usage(cache_root() if cache_root().exists() else Path.home()).free
    print(f"free disk at the cache: {free / 1e9:.1f} GB\n")
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    print(f"chromium (report browser test): {browser or 'not found (make browser installs it)'}")
    print(f"ray (probes sweep): {version('ray')}")
    print(f"jupyterlab (notebooks): {version('jupyterlab')}")
    import torch  # last: the slowest import

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (runs on the CPU)"
    print(f"GPU: {gpu}; torch threads: {torch.get_num_threads()}")


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
    _, run = run_analysis(spec, out)
    index = render(out)
    print(f"\n{spec.title or Path(args.analysis).stem}: {spec.model}, {spec.task or spec.prompts}, "
          f"{time.perf_counter() - start:.0f} s")
    width = max((len(r.verdict) for r in run.claims), default=0)
    for result in run.claims:
        print(f"  {result.verdict.ljust(width)}  {result.sentence.rsplit(':', 1)[0]}")
    for note in run.notes:
        print(f"  note: {note}")
    print("time: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in run.stage_times.items()))
    print(f"report: {index}")


def cmd_report(args: argparse.Namespace) -> None:
    """Re-render a run directory's index.html from its results (no model needed)."""
    from probes.report.render import render

    print(f"report: {render(args.run_dir)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probes", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="list packaged models, whether each is cached, size and licence")
    models.set_defaults(func=cmd_models)
    doctor = sub.add_parser("doctor", help="what is installed, cached and licensed; chromium, Ray and GPU")
    doctor.set_defaults(func=cmd_doctor)
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
