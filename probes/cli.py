"""Command line: ``probes models``.

Every user-facing failure is a :class:`ProbesError`: printed as one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys

from probes.errors import ProbesError

EXIT_BAD_INPUT = 2


def cmd_models(args: argparse.Namespace) -> None:
    """List the packaged models: cached or not, size on disk, licence."""
    from probes.models import PACKAGED, cache_root, cache_status, cached_model_dir

    rows = []
    for spec in PACKAGED.values():
        status = cache_status(spec.name)
        model_dir = cached_model_dir(spec.name)
        size = sum(f.stat().st_size for f in model_dir.iterdir()) / 1e6 if status != "not cached" else None
        installed = "installed" if _installed(spec) else f"not installed ({spec.install})"
        rows.append((spec.name, status, "-" if size is None else f"{size:,.0f} MB", installed, spec.licence, spec.source))
    header = ("name", "cache", "size", "package", "licence", "source")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header) - 1)]
    for row in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    print(f"\ncache: {cache_root()} (set PROBES_CACHE to move it)")


def _installed(spec) -> bool:
    try:
        spec.package_dir()
    except ProbesError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probes", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="list packaged models, whether each is cached, size and licence")
    models.set_defaults(func=cmd_models)
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
