"""Benchmark the world and its probes (chapter 1): clips per second and probe accuracy.

    python benchmarks/bench_world.py --clips 500     # writes benchmarks/results/world.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from avdit_mini import probes
from avdit_mini.data import WorldDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=500)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "world.json"))
    args = parser.parse_args()
    dataset = WorldDataset(args.clips, split="test")
    start = time.perf_counter()
    clips = [dataset[i] for i in tqdm(range(len(dataset)), desc="generating")]
    generate_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores = probes.benchmark(tqdm(clips, desc="probing"))
    probe_seconds = time.perf_counter() - start
    result = {
        "clips": args.clips,
        "split": "test",
        "clips_per_second_generated": args.clips / generate_seconds,
        "clips_per_second_probed": args.clips / probe_seconds,
        "probe_scores": scores,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
