"""How long the course takes to run: every notebook, the model set-up and (optionally) the test suite.

Each notebook runs in a fresh kernel (``nbclient``, as the test suite's nbval does), on the CPU,
from a fresh, empty eelib cache (a new machine: the course models come from the package); the
exercise notebooks are run with their errors allowed (the checks of blank exercises fail, as they
should). ``--suite`` also times the README's test command (``python -m pytest``, fresh cache).
The load average of the machine before and after is recorded: a busy machine's times are longer.
``--busy N`` keeps N other processes busy (``python -c "while True: pass"``) while the notebooks run,
as a browser and a video call do on a lecture laptop, and writes ``run_times_busy.json`` instead.

Run: ``python benchmarks/run_times.py [--suite] [--busy 1] [--only notebooks/04_exit_policies.ipynb ...]``.
Writes ``benchmarks/results/run_times.json`` (``rows``: what, seconds) and prints the rows;
``python benchmarks/readme_tables.py`` puts them into the README's run-time table (the lectures'
times with a busy core beside them, where ``run_times_busy.json`` exists).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eelib._util.cache import save_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "run_times.json"
BUSY_RESULTS = RESULTS.with_name("run_times_busy.json")
FOLDERS = ("notebooks", "solutions", "exercises")


def time_notebook(path: Path, timeout: int = 900) -> float:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=path.parent.name == "exercises",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - start


def time_command(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="store_true", help="also time `python -m pytest` (several minutes)")
    parser.add_argument("--only", nargs="*", type=Path, default=None, help="these notebooks only")
    parser.add_argument("--busy", type=int, default=0, help="keep this many other processes busy meanwhile")
    parser.add_argument("--out", type=Path, default=None, help="default: run_times.json (run_times_busy.json with --busy)")
    args = parser.parse_args(argv)
    if args.busy < 0:
        parser.error(f"--busy must be >= 0, got {args.busy}")
    out = args.out or (BUSY_RESULTS if args.busy else RESULTS)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        return _run(args, out, busy=args.busy)
    finally:
        for process in busy:
            process.kill()
            process.wait()


def _run(args: argparse.Namespace, out: Path, *, busy: int) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="eelib-times-")) / "cache"
    os.environ.update(EELIB_CACHE=str(cache), EELIB_DEVICE="cpu", MPLBACKEND="Agg")
    env = dict(os.environ)
    load_before = os.getloadavg()
    rows = [{"what": "`python -m eelib.course models` (fresh cache: loads the shipped models)",
             "seconds": time_command([sys.executable, "-m", "eelib.course", "models"], env)}]
    paths = args.only or [p for folder in FOLDERS for p in sorted((ROOT / folder).glob("*.ipynb"))]
    for path in paths:
        path = path.resolve()
        seconds = time_notebook(path)
        rows.append({"what": f"`{path.relative_to(ROOT)}`", "seconds": seconds})
        print(f"{rows[-1]['what']:50s} {seconds:6.1f} s", flush=True)
    if args.suite:
        suite_env = {**env, "EELIB_CACHE": str(cache.with_name("suite-cache"))}
        rows.append({"what": "the README's test command, `python -m pytest` (fresh cache)",
                     "seconds": time_command([sys.executable, "-m", "pytest", "-q"], suite_env)})
        print(f"{rows[-1]['what']:50s} {rows[-1]['seconds']:6.1f} s", flush=True)
    results = {"rows": rows, "machine": f"{platform.machine()}, {os.cpu_count()} cores", "busy_processes": busy,
               "load_average_before_after": [load_before[0], os.getloadavg()[0]]}
    save_json(results, out)
    return results


if __name__ == "__main__":
    main()
