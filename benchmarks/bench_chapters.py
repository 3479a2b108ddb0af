"""Run every chapter top to bottom in one profile and time it (the book's "each chapter in minutes").

    python benchmarks/bench_chapters.py --profile cpu              # writes benchmarks/results/chapters_cpu.json
    python benchmarks/bench_chapters.py --profile smoke --chapters 01 03

Each chapter runs through papermill with ``-p profile PROFILE`` (the parameters cell every chapter
starts with), in its own kernel, in ``book/`` as a reader's Jupyter would. The result file is
rewritten after every chapter, so an interrupted run keeps what it measured; a chapter that raises
is recorded with the cell and the error, and the run goes on to the next one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import papermill
import torch

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"


def run_chapter(notebook: Path, profile: str, out_dir: Path) -> dict:
    """Execute one chapter; its wall time, and the error if a cell raised."""
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(notebook), str(out_dir / notebook.name), parameters={"profile": profile},
                                   kernel_name="python3", cwd=str(BOOK), progress_bar=False)
        error = None
    except papermill.PapermillExecutionError as failure:
        error = f"cell {failure.exec_count}: {failure.ename}: {failure.evalue}"[:500]
    return {"chapter": notebook.stem, "seconds": round(time.perf_counter() - start, 1), "ok": error is None,
            "error": error, "load_average": round(os.getloadavg()[0], 2)}  # other work on the machine slows a chapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "gpu"])
    parser.add_argument("--chapters", nargs="*", default=None,
                        help="chapter number prefixes (01 02 ...); default every chapter")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP/MKL threads for each chapter's kernel (default: what torch would use)")
    parser.add_argument("--keep", default=None, help="folder to keep the executed notebooks in")
    parser.add_argument("--out", default=None, help="default benchmarks/results/chapters_PROFILE.json")
    args = parser.parse_args()

    notebooks = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
    if args.chapters:
        unknown = [c for c in args.chapters if not any(n.name.startswith(c) for n in notebooks)]
        if unknown:
            raise SystemExit(f"no chapter starts with {unknown}; the chapters are {[n.stem for n in notebooks]}")
        notebooks = [n for n in notebooks if any(n.name.startswith(c) for c in args.chapters)]
    if args.threads:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[key] = str(args.threads)  # the kernels inherit the environment
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"chapters_{args.profile}.json")
    keep = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="chapters_"))
    keep.mkdir(parents=True, exist_ok=True)

    result = {
        "profile": args.profile,
        "threads": args.threads or torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.system()}",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "command": "python benchmarks/bench_chapters.py " + " ".join(
            f"--{k} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items()
            if v is not None and k != "keep"),
        "chapters": [],
    }
    for notebook in notebooks:
        print(f"{notebook.stem} ({args.profile}) ...", flush=True)
        row = run_chapter(notebook, args.profile, keep)
        result["chapters"].append(row)
        result["total_seconds"] = round(sum(r["seconds"] for r in result["chapters"]), 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, out)  # an interrupted run keeps every chapter it finished
        print(f"  {'ok' if row['ok'] else 'FAILED: ' + row['error']} in {row['seconds'] / 60:.1f} min", flush=True)
    print(json.dumps(result, indent=2))
    if not all(r["ok"] for r in result["chapters"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
