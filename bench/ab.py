"""Paired A/B of fan-out 1: two checkouts of switchd (say main and a branch) measured in
turns on one sink, the first of each pair alternating, so that both meet the same
machine. Prints each pair and the median ratio B/A of events delivered per second.

The machine is shared and noisy: this is an indication, not a measurement of record
(that is `make bench`). The code under test is each checkout's `switchd/` (PYTHONPATH;
PYTHONSAFEPATH keeps the current directory's out); the load generator is this one.

    .venv/bin/python bench/ab.py A_DIR B_DIR [--pairs 6] [--events 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import run  # bench/run.py, beside this script


@dataclass
class Checkout(run.Backend):
    """The embedded queue, served by the switchd package of another checkout."""

    path: Path = Path()

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.path), "PYTHONSAFEPATH": "1"}


async def pairs(checkouts: tuple[Path, Path], count: int, events: int) -> list[float]:
    """`count` pairs of fan-out 1 runs; the ratio B/A of each pair."""
    sink = await run.start_sink()
    ratios = []
    try:
        with tempfile.TemporaryDirectory(prefix="switchd-ab-") as tmp:
            for n in range(count):
                order = (0, 1) if n % 2 == 0 else (1, 0)
                rates: dict[int, float] = {}
                for side in order:
                    workdir = Path(tmp) / f"{n}-{side}"
                    workdir.mkdir()
                    backend = Checkout("", path=checkouts[side])
                    figures = await run.measure_fanout(sink, 1, events, workdir, backend)
                    rates[side] = figures["events_delivered_per_s"]
                ratios.append(rates[1] / rates[0])
                print(
                    f"pair {n + 1}: A {rates[0]:,.0f}/s, B {rates[1]:,.0f}/s, "
                    f"B/A {ratios[-1]:.3f} ({'AB' if order == (0, 1) else 'BA'})",
                    flush=True,
                )
    finally:
        await sink.stop()
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a", type=Path, help="checkout A (the reference, e.g. main)")
    parser.add_argument("b", type=Path, help="checkout B (e.g. the branch)")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--events", type=int, default=3000)
    args = parser.parse_args()
    for checkout in (args.a, args.b):
        if not (checkout / "switchd" / "__init__.py").is_file():
            parser.error(f"{checkout} holds no switchd/ package")
    ratios = asyncio.run(pairs((args.a.resolve(), args.b.resolve()), args.pairs, args.events))
    print(
        f"B/A events delivered per second, fan-out 1: median {statistics.median(ratios):.3f} "
        f"(range {min(ratios):.3f}–{max(ratios):.3f}, {len(ratios)} pairs)"
    )


if __name__ == "__main__":
    main()
