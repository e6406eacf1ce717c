"""Peak memory of ``probes.harvest`` is flat in the number of prompts: N=200 vs N=2000 on SmolLM2.

Each N runs in its own subprocess (peak RSS is a per-process high-water mark), harvesting a cheap setting:
``resid_post`` and ``z`` at layers 0-2 at the pronoun of ``pronoun_resolution`` prompts. Printed per N: peak RSS,
RSS just before harvesting (model and prompts loaded), the harvest's own increment, bytes written, time.

    PROBES_CACHE=/tmp/pc .venv/bin/python bench/activations.py [--n 200 2000] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KINDS = ("resid_post", "z")
LAYERS = (0, 1, 2)
ROLE = "pronoun"


def _rss_mb() -> float:
    """Current resident set size, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(n: int, batch_size: int) -> dict:
    import probes
    from probes.prompts.tasks import pronoun_resolution

    model = probes.load_model("smollm2-135m")
    prompts = pronoun_resolution(model, n, seed=0)
    before = _rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        store = probes.harvest(model, prompts, Path(tmp) / "acts", KINDS, LAYERS, at=ROLE, batch_size=batch_size)
        seconds = time.perf_counter() - start
        written = sum(f.stat().st_size for f in store.directory.iterdir())
        rows = store.n_rows
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return dict(n=n, rows=rows, peak_rss_mb=peak, rss_before_mb=before, written_mb=written / 2**20, seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.batch_size)))
        return
    results = []
    for n in args.n:
        cmd = [sys.executable, __file__, "--child", str(n), "--batch-size", str(args.batch_size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        r = results[-1]
        print(
            f"N={r['n']:>5}  rows={r['rows']:>5}  peak RSS {r['peak_rss_mb']:7.1f} MB  (before harvest "
            f"{r['rss_before_mb']:7.1f} MB, harvest adds {r['peak_rss_mb'] - r['rss_before_mb']:6.1f} MB)  "
            f"written {r['written_mb']:6.1f} MB  {r['seconds']:6.1f} s",
            flush=True,
        )
    first, last = results[0], results[-1]
    print(
        f"settings: SmolLM2-135M, {'+'.join(KINDS)} at layers {list(LAYERS)}, role '{ROLE}', batch {args.batch_size}\n"
        f"N x{last['n'] / first['n']:.0f}: peak RSS x{last['peak_rss_mb'] / first['peak_rss_mb']:.3f}, "
        f"data written x{last['written_mb'] / first['written_mb']:.1f}"
    )


if __name__ == "__main__":
    main()
