"""Run the benchmarks in bench/: `python -m bench [--list] [NAME ...] [-- ARGS]`.

Every module `bench/<name>_bench.py` with a `main(argv) -> int` is a benchmark. Without names,
all of them run, one after the other, except modules that set `RUN_BY_DEFAULT = False`
(name them to run them). Arguments after `--` go to each benchmark that runs.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType


def discover() -> dict[str, str]:
    """{short name: module name} of every benchmark module, sorted."""
    here = str(Path(__file__).resolve().parent)
    found = {}
    for info in pkgutil.iter_modules([here]):
        if info.name.endswith("_bench"):
            found[info.name.removesuffix("_bench")] = f"bench.{info.name}"
    return dict(sorted(found.items()))


def _summary(module_name: str) -> str:
    """First docstring line, read without importing the module."""
    path = Path(__file__).resolve().parent / f"{module_name.split('.')[-1]}.py"
    text = path.read_text(encoding="utf-8").lstrip()
    for quote in ('"""', "'''"):
        if text.startswith(quote):
            return text[3:].split("\n", 1)[0].strip()
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """List, or run the named (default: all) benchmarks; the worst exit status wins."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    found = discover()
    if args.list:
        for name, mod in found.items():
            print(f"{name:12s} {_summary(mod)}")
        return 0
    unknown = [n for n in args.names if n not in found]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(found)}", file=sys.stderr)
        return 2
    status = 0
    for name in args.names or list(found):
        module: ModuleType = importlib.import_module(found[name])
        if not args.names and getattr(module, "RUN_BY_DEFAULT", True) is False:
            print(f"== {name}: skipped by default (run `python -m bench {name}`)")
            continue
        print(f"== {name}: {_summary(found[name])}", flush=True)
        t0 = time.monotonic()
        code = int(module.main(extra) or 0)
        print(f"== {name}: exit {code} after {time.monotonic() - t0:.0f} s", flush=True)
        status = status or code
    return status


if __name__ == "__main__":
    sys.exit(main())
