"""Paired runs of bench/run.py's Faktory rows: switchd from two source trees, in turn.

On one real Faktory and one sink, each pair measures the Faktory ceiling, then for each
tree (which goes first alternates from pair to pair) fan-out 1 and fan-out 10, then the
publish latency at half of that tree's own fan-out 1 maximum (events delivered per second),
as bench/run.py does, and at one rate for both trees, half the lower of their two maxima.
It prints every run, each figure's median per tree, and the median and range of the
per-pair ratio this tree / the other one.

    .venv/bin/python bench/faktory_pairs.py OTHER_TREE [--pairs N] [--scale S]

OTHER_TREE is another checkout of switchd (`git worktree add`, or `git archive main | tar
-x -C DIR`): its `switchd` package is put first on the PYTHONPATH of the `switchd serve`
it runs. The load generator, sink and ceiling are this tree's for both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from run import (
    RESULTS,
    ROOT,
    Backend,
    measure_faktory_ceiling,
    measure_fanout,
    measure_fixed_rate,
    start_faktory,
    start_sink,
)

from switchd.cli.serve import run_loop

FIGURES = (  # (run, figure, label) reported
    ("ceiling", "jobs_per_s", "Faktory ceiling, jobs/s"),
    ("ceiling", "queue_server_cpu_cores", "Faktory ceiling, Faktory + redis CPU cores"),
    ("fanout1", "events_delivered_per_s", "fan-out 1, events delivered/s"),
    ("fanout1", "publish_p99_ms", "fan-out 1, publish p99 ms"),
    ("fanout1", "switchd_cpu_cores", "fan-out 1, switchd CPU cores"),
    ("fanout1", "queue_server_cpu_cores", "fan-out 1, Faktory + redis CPU cores"),
    ("fanout10", "deliveries_per_s", "fan-out 10, deliveries/s"),
    ("fanout10", "publish_p99_ms", "fan-out 10, publish p99 ms"),
    ("fanout10", "switchd_cpu_cores", "fan-out 10, switchd CPU cores"),
    ("fanout10", "queue_server_cpu_cores", "fan-out 10, Faktory + redis CPU cores"),
    ("fixed", "offered_per_s", "half own max: offered publishes/s"),
    ("fixed", "publish_p50_ms", "half own max: publish p50 ms"),
    ("fixed", "publish_p99_ms", "half own max: publish p99 ms"),
    ("common", "offered_per_s", "common rate: offered publishes/s"),
    ("common", "publish_p50_ms", "common rate: publish p50 ms"),
    ("common", "publish_p99_ms", "common rate: publish p99 ms"),
)


@dataclass
class TreeBackend(Backend):
    """The real Faktory, with switchd run from the source tree `tree`."""

    tree: Path = ROOT

    def env(self) -> dict[str, str]:
        return {**super().env(), "PYTHONPATH": str(self.tree)}


async def measure_fanouts(
    sink: Any, backend: TreeBackend, scale: float, workdir: Path
) -> dict[str, dict[str, float]]:
    """One tree's fan-out rows, as bench/run.py's measure_round takes them."""
    await asyncio.to_thread(workdir.mkdir)
    return {
        f"fanout{fanout}": await measure_fanout(sink, fanout, int(events * scale), workdir, backend)
        for fanout, events in ((1, 5_000), (10, 2_000))
    }


async def measure_rates(
    sink: Any,
    backend: TreeBackend,
    scale: float,
    workdir: Path,
    figures: dict[str, Any],
    common: float,
) -> None:
    """Publish latency at half the tree's own fan-out 1 maximum, then at `common`/s."""
    half = figures["fanout1"]["events_delivered_per_s"] / 2
    for name, rate in (("fixed", half), ("common", common)):
        figures[name] = await measure_fixed_rate(
            sink, rate, 10 * scale, workdir / f"{name}.db", backend
        )


def imported_from(tree: Path) -> str:
    """Where `python -m switchd` finds the package with this tree on PYTHONPATH."""
    code = "import switchd; print(switchd.__file__)"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return done.stdout.strip() or done.stderr.strip()


async def main_async(other: Path, pairs: int, scale: float) -> list[dict[str, Any]]:
    faktory = await start_faktory()
    if faktory is None:
        raise SystemExit("no real Faktory here (see above)")
    trees = {"this": ROOT, "other": other}
    sink = await start_sink()
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="switchd-pairs-") as tmp:
            os.chdir(tmp)  # `python -m` puts the working folder first on sys.path
            for name, tree in trees.items():
                print(f"{name}: switchd from {imported_from(tree)}", flush=True)
            for pair in range(pairs):
                ceiling = await measure_faktory_ceiling(faktory, int(20_000 * scale))
                order = list(trees) if pair % 2 == 0 else list(reversed(trees))
                run: dict[str, Any] = {"ceiling": ceiling}
                backends = {name: TreeBackend("faktory_", faktory, trees[name]) for name in order}
                workdirs = {name: Path(tmp) / f"pair{pair}-{name}" for name in order}
                for name in order:
                    run[name] = await measure_fanouts(sink, backends[name], scale, workdirs[name])
                common = min(run[n]["fanout1"]["events_delivered_per_s"] for n in order) / 2
                for name in order:
                    await measure_rates(
                        sink, backends[name], scale, workdirs[name], run[name], common
                    )
                    print_run(pair, name, ceiling, run[name])
                runs.append(run)
    finally:
        await sink.stop()
        await asyncio.to_thread(faktory.stop)
    return runs


def figure(run: dict[str, Any], tree: str, part: str, key: str) -> float:
    return float(run["ceiling"][key] if part == "ceiling" else run[tree][part][key])


def print_run(pair: int, name: str, ceiling: dict[str, float], figures: dict[str, Any]) -> None:
    run = {"ceiling": ceiling, name: figures}
    values = ", ".join(f"{label} {figure(run, name, p, k):,.2f}" for p, k, label in FIGURES)
    print(f"pair {pair} {name}: {values}", flush=True)


def report(runs: list[dict[str, Any]]) -> None:
    print(f"\nmedians over {len(runs)} pairs; ratio = this / other, per pair (range)")
    for part, key, label in FIGURES:
        this = [figure(r, "this", part, key) for r in runs]
        other = [figure(r, "other", part, key) for r in runs]
        line = f"{label:42} this {statistics.median(this):10,.2f}"
        if part != "ceiling":
            ratios = [a / b for a, b in zip(this, other, strict=True) if b]
            line += f"  other {statistics.median(other):10,.2f}"
            if ratios:
                line += f"  ratio {statistics.median(ratios):.2f}"
                line += f" ({min(ratios):.2f}–{max(ratios):.2f})"
        print(line)
    for tree in ("this", "other"):
        shares = [
            figure(r, tree, "fanout1", "events_delivered_per_s") / r["ceiling"]["jobs_per_s"]
            for r in runs
        ]
        tens = [
            figure(r, tree, "fanout10", "deliveries_per_s") / r["ceiling"]["jobs_per_s"]
            for r in runs
        ]
        print(
            f"{tree}: fan-out 1 / ceiling {statistics.median(shares):.2f} "
            f"({min(shares):.2f}–{max(shares):.2f}), fan-out 10 / ceiling "
            f"{statistics.median(tens):.2f} ({min(tens):.2f}–{max(tens):.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("other", type=Path, help="another switchd source tree")
    parser.add_argument("--pairs", type=int, default=3, help="default 3")
    parser.add_argument("--scale", type=float, default=1.0, help="of run.py's full run")
    args = parser.parse_args()
    if not (args.other / "switchd" / "__init__.py").exists():
        raise SystemExit(f"{args.other} holds no switchd package")
    runs = run_loop(main_async(args.other.resolve(), max(1, args.pairs), args.scale))
    report(runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / time.strftime("faktory-pairs-%Y%m%d-%H%M%S.json")
    out.write_bytes(orjson.dumps({"other": str(args.other), "runs": runs}))
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
