"""Command line: ``probes models | doctor | run ANALYSIS.toml | report RUN_DIR | sweep SWEEP.toml``.

Every user-facing failure is a :class:`ProbesError`: printed as one line on stderr, exit code 2, no traceback.
Input is read and checked before torch is imported or a model loaded (spec, prompt file, ``--out``, whether a hub
name can be reached), so a mistake costs a second, not a model load. Each subcommand is one ``cmd_*`` function
that imports what it needs, plus its lines in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from probes.core.errors import ProbesError

EXIT_BAD_INPUT = 2
STALE_RUN_S = 24 * 3600  # a scratch run directory this old was left by a killed run: removed on the next run


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (its default adds the usage text)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


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
    _doctor_kernels()


def _doctor_kernels() -> None:
    """The float32 linear kernel each cached packaged model runs on this machine, and the rates that chose it
    (measured now where this machine has no cached choice for its shapes)."""
    import json

    from probes.core.provenance import cpu_model
    from probes.models.cache import CONFIG_FILE, cached_model_dir
    from probes.models.kernels import choose_kernel, linear_shapes
    from probes.models.registry import PACKAGED

    import torch

    print(f"float32 linear kernel on {cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}:")
    configs = {name: cached_model_dir(name) / CONFIG_FILE for name in PACKAGED}
    configs = {name: path for name, path in configs.items() if path.is_file()}
    for name, path in configs.items():
        print(f"  {name}: {choose_kernel(linear_shapes(json.loads(path.read_text()))).describe()}")
    if not configs:
        print("  chosen per model on first use (no packaged model cached yet)")


def cmd_run(args: argparse.Namespace) -> None:
    """Run an analysis spec, write the run directory and its report, print a one-screen summary.

    The run directory, page included, is built beside ``--out`` and swapped in whole at the end: an interrupted
    run leaves the previous run (or nothing) there.
    """
    import time
    import warnings

    from probes.core.io import atomic_dir, remove_stale_temps
    from probes.models.registry import model_source, require_hub
    from probes.prompts.catalogue import require_records_fit
    from probes.prompts.records import RepeatedLines, read_records
    from probes.run.outdir import check_out_dir
    from probes.run.spec import AnalysisSpec

    spec = AnalysisSpec.from_toml(args.analysis)
    for key in ("model", "prompts", "n", "seed"):
        value = getattr(args, key)
        if value is not None:
            setattr(spec, key, value)
    if args.prompts is not None:
        spec.task = None
    spec.check("command line")
    out = check_out_dir(args.out or Path("reports") / f"{Path(args.analysis).stem}-{Path(spec.model).name}",
                        args.overwrite)
    if spec.prompts is not None:
        _, _, note = read_records(spec.prompts)
        if note is not None:
            print(f"note: {note}")
    else:
        require_records_fit(spec.n)
    spec.check_sources(args.analysis)  # the model and the roles: before any model loads
    if model_source(spec.model) == "hub":
        require_hub(spec.model)
    remove_stale_temps(out, older_than_s=STALE_RUN_S)

    from probes.report.render import render  # the heavy imports (torch, TransformerLens) start here
    from probes.prompts.tasks import check_distinct
    from probes.run.pipeline import run_analysis

    if spec.task is not None:  # before the model loads: an n no tokenizer could make distinct
        check_distinct(spec.task, spec.n, spec.templates)

    start = time.perf_counter()
    with warnings.catch_warnings(), atomic_dir(out) as staging:
        warnings.simplefilter("ignore", RepeatedLines)  # said above, on stdout: stderr is for the one error line
        _, run = run_analysis(spec, staging, announce=print)
        render(staging)
        check_out_dir(out, args.overwrite)  # nothing appeared there meanwhile that the swap would replace
    print(f"\n{spec.title or Path(args.analysis).stem}: {spec.model}, {spec.task or spec.prompts}, "
          f"{time.perf_counter() - start:.0f} s")
    width = max((len(r.verdict) for r in run.claims), default=0)
    for result in run.claims:
        print(f"  {result.verdict.ljust(width)}  {result.sentence.rsplit(':', 1)[0]}")
    for note in run.notes:
        print(f"  note: {note}")
    print("time: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in run.stage_times.items()))
    print(f"report: {out / 'index.html'}")


def cmd_report(args: argparse.Namespace) -> None:
    """Re-render a run directory's index.html from its results (no model needed)."""
    from probes.run.outdir import require_run_dir

    run_dir = require_run_dir(args.run_dir)
    from probes.report.render import render  # plotly, pandas: after the quick check

    print(f"report: {render(run_dir)}")


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
    parser = Parser(prog="probes", description=(__doc__ or "probes").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
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
    run.add_argument("--out", help="run directory (default reports/ANALYSIS-MODEL); never a directory of other files")
    run.add_argument("--overwrite", action="store_true", help="replace the earlier run in --out (only a run directory)")
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


@contextmanager
def _interrupts_noted() -> Iterator[list[int]]:
    """Note each ^C as well as raising KeyboardInterrupt: inside a C extension the interrupt can surface as some
    other exception (safetensors' loader turns it into a ValueError), and the run must still end as interrupted."""
    noted: list[int] = []

    def note_then_interrupt(signum, frame):
        noted.append(signum)
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()  # only there may a handler be set
    previous = signal.signal(signal.SIGINT, note_then_interrupt) if in_main_thread else None
    try:
        yield noted
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _interrupts_noted() as interrupts:
            try:
                args.func(args)
            except Exception:
                if interrupts:
                    raise KeyboardInterrupt from None
                raise
    except ProbesError as err:
        print(f"probes: error: {_one_line(str(err))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # the file system said no (full disk, permissions): what and where, not a traceback
        where = f" ({err.filename})" if err.filename else ""
        print(f"probes: error: {_one_line(err.strerror or str(err))}{where}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("probes: interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
