"""Installed size and start-up time: the base install against the full one, in the same run.

Two fresh venvs from one wheelhouse (tests/install/wheelhouse.py: this package built from the
source tree, its dependencies repacked from this venv, so no network is needed):
- full: `connvo-agent[devserver,load,transcriber]`, the dependencies every install had before
  they became extras;
- base: `connvo-agent`, the agent alone (the bot role).

For each: the pip install's wall time, `du -sh` of site-packages (pip and setuptools, which every
venv has, included), the distributions installed, the import time of `agent.cli.main`
(`python -X importtime`, cumulative) and the wall time of `connvo-agent --help` and
`connvo-agent run --help` (each the median of --runs runs, the two venvs alternating).

    python bench/install_footprint.py [--runs 9] [--keep DIR]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.install.wheelhouse import clean_env, fresh_venv, site_packages, wheelhouse  # noqa: E402

FULL_EXTRAS = ("devserver", "load", "transcriber")


def du(path: Path) -> str:
    return subprocess.run(
        ["du", "-sh", str(path)], capture_output=True, text=True, check=True
    ).stdout.split()[0]


def import_ms(python: Path, cwd: Path) -> float:
    """Cumulative import time of agent.cli.main, from -X importtime's own line for it."""
    err = subprocess.run(
        [str(python), "-X", "importtime", "-c", "import agent.cli.main"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
        cwd=cwd,
    ).stderr
    line = next(x for x in err.splitlines() if x.rstrip().endswith("| agent.cli.main"))
    return int(line.split("|")[1]) / 1000


def wall_ms(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True, env=clean_env(), cwd=cwd)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--keep", type=Path, default=None, help="Build here and keep it.")
    args = parser.parse_args()
    if args.keep is not None:
        measure(args.keep, args.runs)
        print(f"(venvs kept in {args.keep})")
    else:
        with tempfile.TemporaryDirectory(prefix="connvo-footprint-") as tmp:
            measure(Path(tmp), args.runs)


def measure(work: Path, runs: int) -> None:
    house = wheelhouse(work / "wheels", work / "build", FULL_EXTRAS)

    specs = {
        "full": f"connvo-agent[{','.join(FULL_EXTRAS)}]",
        "base": "connvo-agent",
    }
    rows: dict[str, dict[str, str]] = {}
    bins: dict[str, Path] = {}
    for name, spec in specs.items():
        started = time.perf_counter()
        bins[name] = fresh_venv(work / name, house, spec)
        installed = time.perf_counter() - started
        dists = subprocess.run(
            [str(bins[name] / "python"), "-m", "pip", "list", "--format=freeze"],
            capture_output=True,
            text=True,
            check=True,
            env=clean_env(),
        ).stdout.split()
        rows[name] = {
            "install": f"{installed:.1f} s",
            "site-packages": du(site_packages(work / name)),
            "distributions": str(len(dists)),
        }

    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(runs):
        for name, bin_dir in bins.items():  # alternating, so drift hits both alike
            measures = {
                "import agent.cli.main": import_ms(bin_dir / "python", work),
                "connvo-agent --help": wall_ms([str(bin_dir / "connvo-agent"), "--help"], work),
                "connvo-agent run --help": wall_ms(
                    [str(bin_dir / "connvo-agent"), "run", "--help"], work
                ),
            }
            for key, value in measures.items():
                samples.setdefault((name, key), []).append(value)
    for (name, key), values in samples.items():
        rows[name][key] = f"{statistics.median(values):.0f} ms"

    keys = list(rows["full"])
    width = max(len(k) for k in keys)
    print(f"{'':{width}}  {'full':>10}  {'base':>10}")
    for key in keys:
        print(f"{key:{width}}  {rows['full'][key]:>10}  {rows['base'][key]:>10}")
    print(f"(times: medians of {runs} runs)")


if __name__ == "__main__":
    main()
