"""Run every benchmark in MODULES (or those named on the command line), each in its own process and scratch database."""

import subprocess
import sys

from benchmarks import MODULES


def main() -> int:
    names = sys.argv[1:] or list(MODULES)
    unknown = [name for name in names if name not in MODULES]
    if unknown:
        print(f"Unknown benchmark {unknown[0]!r}; the benchmarks are: {', '.join(MODULES)}.", file=sys.stderr)
        return 2
    status = 0
    for name in names:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        status = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"]) or status
    return status


if __name__ == "__main__":
    sys.exit(main())
