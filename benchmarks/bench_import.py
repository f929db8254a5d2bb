"""Import time: ``from taskapp import InProcessTaskApp`` vs the asyncio floor.

Usage (from the repository root)::

    python benchmarks/bench_import.py                 # 9 fresh processes per variant
    python benchmarks/bench_import.py --runs 21 --json /tmp/import.json
    python benchmarks/bench_import.py --runs 3 --top 0  # quickest (bench-smoke)

The floor is what any asyncio HTTP program imports anyway::

    python -c "import asyncio, http.client, typing"

and taskapp's line is::

    python -c "from taskapp import InProcessTaskApp"

plus ``import taskapp`` and ``python -c pass`` beside them, and ``floor + taskapp`` (the
floor line, then taskapp's): taskapp's own cost over what the floor imports. The taskapp
line alone can come out *below* the floor, since ``http.client`` (and the ``email``
package it pulls in) is imported by the first start, not by the import. Each sample is one fresh
interpreter; the variants are interleaved round by round (the order rotating) so that
noise from other work on the machine spreads over all of them, and one warm-up round is
discarded. Children share one bytecode cache (``PYTHONPYCACHEPREFIX`` in a temporary
folder, as an installed package would have compiled files).

Two figures per variant: wall time (spawn to exit, as ``time python -c ...`` shows) and
the child's CPU time (user + system, from ``wait4``), which a loaded machine disturbs
less. The ratio to the floor is printed for both; issue 27's goal is ≤ 1.1x. Then the
modules the taskapp line imports beyond the floor, and the slowest of them by
``-X importtime`` (``--top``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOR = "import asyncio, http.client, typing"
VARIANTS: dict[str, str] = {
    "pass": "pass",
    "floor": FLOOR,
    "import taskapp": "import taskapp",
    "from taskapp import InProcessTaskApp": "from taskapp import InProcessTaskApp",
    "floor + taskapp": f"{FLOOR}; from taskapp import InProcessTaskApp",
}
TASKAPP_LINE = "from taskapp import InProcessTaskApp"


def one_sample(python: str, code: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh ``python -c code``."""
    start = time.perf_counter()
    child = subprocess.Popen([python, "-c", code], env=env)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"python -c {code!r} failed with exit status {child.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def modules_beyond_floor(python: str, code: str, env: dict[str, str]) -> list[str]:
    """The modules ``code`` leaves in ``sys.modules`` that the floor line does not."""

    def loaded(line: str) -> set[str]:
        out = subprocess.run(
            [python, "-c", f"{line}\nimport sys; print(' '.join(sorted(sys.modules)))"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
        return set(out.split())

    return sorted(loaded(code) - loaded(FLOOR))


def importtime_top(python: str, code: str, env: dict[str, str], n: int) -> list[tuple[str, int]]:
    """(module, self microseconds) of the ``n`` slowest imports ``code`` adds over the floor."""

    def self_times(line: str) -> dict[str, int]:
        err = subprocess.run(
            [python, "-X", "importtime", "-c", line],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stderr
        times: dict[str, int] = {}
        for row in err.splitlines():
            if not row.startswith("import time:") or "self [us]" in row:
                continue
            self_part, _, name = row.split("|")
            times[name.strip()] = int(self_part.split(":")[1])
        return times

    ours = self_times(code)
    floor = self_times(FLOOR)
    extra = [(name, us) for name, us in ours.items() if name not in floor]
    return sorted(extra, key=lambda item: -item[1])[:n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=9, help="fresh processes per variant")
    parser.add_argument("--top", type=int, default=12, help="-X importtime rows to show")
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    parser.add_argument("--json", type=Path, help="write the raw samples here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-import-") as cache:
        env = {**os.environ, "PYTHONPYCACHEPREFIX": cache}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        names = list(VARIANTS)
        for name in names:  # warm-up: compile into the cache; discarded
            one_sample(args.python, VARIANTS[name], env)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        for round_ in range(args.runs):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(one_sample(args.python, VARIANTS[name], env))
        beyond = modules_beyond_floor(args.python, TASKAPP_LINE, env)
        top = importtime_top(args.python, TASKAPP_LINE, env, args.top) if args.top else []

    wall = {name: statistics.median(s[0] for s in samples[name]) for name in names}
    cpu = {name: statistics.median(s[1] for s in samples[name]) for name in names}
    print(f"Import time, median of {args.runs} fresh processes per variant (interleaved)")
    print(f"python: {args.python}; load average {os.getloadavg()[0]:.2f}")
    print()
    print("| command | wall ms | CPU ms | wall / floor | CPU / floor |")
    print("|---|---|---|---|---|")
    for name in names:
        print(
            f'| `python -c "{VARIANTS[name]}"` | {wall[name] * 1e3:.1f} | {cpu[name] * 1e3:.1f} '
            f"| {wall[name] / wall['floor']:.2f}x | {cpu[name] / cpu['floor']:.2f}x |"
        )
    print()
    print(
        f"ratio `{TASKAPP_LINE}` / floor: wall {wall[TASKAPP_LINE] / wall['floor']:.2f}x, "
        f"CPU {cpu[TASKAPP_LINE] / cpu['floor']:.2f}x (goal <= 1.10x); "
        f"floor + taskapp / floor: wall {wall['floor + taskapp'] / wall['floor']:.2f}x, "
        f"CPU {cpu['floor + taskapp'] / cpu['floor']:.2f}x"
    )
    print()
    print(f"modules `{TASKAPP_LINE}` imports beyond the floor ({len(beyond)}):")
    print(" ".join(beyond))
    if top:
        print()
        print("slowest of them by -X importtime (self us, one run):")
        print(", ".join(f"{name} {us}" for name, us in top))
    if args.json is not None:
        args.json.write_text(
            json.dumps({"samples": samples, "beyond_floor": beyond, "importtime_top": top})
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
