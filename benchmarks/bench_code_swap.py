"""Does the decoder draw what the latent's shape code says? (chapter 7, "A latent that says its shape")

    python benchmarks/bench_code_swap.py --autoencoders runs/align/video_ae runs/align2/video_ae --clips 300

For each video autoencoder whose encoder was taught to say the shape (``train autoencoder --shape-alignment``):
each shape's *code* is the coverage-weighted mean of its latent cells (minus the latents' mean) over
``--fit-clips`` train clips. Then, for held-out ``val`` triangles, the triangle's code is swapped for a
circle's or a square's in every latent cell the object touches (the fine pattern left as it was), and
the result is decoded: what does the probe read, and what does a linear read-out of the cells
(``bench_shape_code.py``'s, fitted on the same train clips) say the swapped latent holds? A decoder that
drew from the code alone would follow the swap; one that drew from the fine pattern alone would keep
every triangle.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from avdit_mini import checkpoints, probes
from avdit_mini.data import SHAPES
from avdit_mini.pipeline import load_autoencoder
from avdit_mini.train import val_batches
from bench_shape_code import encoded, fit_readout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoencoders", nargs="+", required=True, help="checkpoint stems of shape-aligned video autoencoders")
    parser.add_argument("--clips", type=int, default=300, help="held-out val clips (their triangles are swapped)")
    parser.add_argument("--fit-clips", type=int, default=300, help="train clips for the codes and the read-out")
    parser.add_argument("--triangles", type=int, default=60, help="at most this many val triangles")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "code_swap.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    result = {"clips": args.clips, "fit_clips": args.fit_clips, "shape_classes": list(SHAPES), "autoencoders": {}}
    for stem in args.autoencoders:
        model = load_autoencoder("video", Path(stem).parent, name=Path(stem).name).eval()
        latents, cells, _, factors = encoded(model, val_batches(args.fit_clips, 50, split="train"))
        mean = latents.mean(dim=(0, 2, 3, 4), keepdim=True)
        spread = latents.std(dim=(0, 2, 3, 4))
        shapes = torch.tensor([SHAPES.index(f["shape"]) for f in factors])
        readout = fit_readout(latents - mean, cells, shapes, spread)
        code = {}
        for k, shape in enumerate(SHAPES):  # coverage-weighted mean latent cell of each shape
            weight = cells[shapes == k][:, None]
            code[shape] = ((latents[shapes == k] - mean) * weight).sum(dim=(0, 2, 3, 4)) / weight.sum()
        z, c, _, f = encoded(model, val_batches(args.clips, 50))
        chosen = [i for i, x in enumerate(f) if x["shape"] == "triangle"][:args.triangles]
        z, c = z[chosen], c[chosen]
        touched = (c[:, None] > 0).float()
        entry = {"sha256": checkpoints.sha256(checkpoints.checkpoint_paths(stem)["weights"])[:12], "triangles": len(chosen),
                 "code_distance": {s: round(float((code[s] - code["triangle"]).norm() / spread.norm()), 4) for s in SHAPES},
                 "swaps": {}}
        for target in ("triangle", "circle", "square"):  # "triangle": nothing swapped
            swapped = z + (code[target] - code["triangle"]).reshape(1, -1, 1, 1, 1) * touched
            with torch.no_grad():
                votes = (readout(swapped - mean, spread).log_softmax(dim=1) * c[:, None]).sum(dim=(2, 3, 4)).argmax(dim=1)
                drawn = [probes.measure_video(v)["shape"] for v in model.decode(swapped)]
            entry["swaps"][target] = {"readout_says": {s: int((votes == k).sum()) for k, s in enumerate(SHAPES)},
                                      "probe_reads": {s: drawn.count(s) for s in SHAPES}}
            print(stem, f"triangles given the {target}'s code:", entry["swaps"][target], flush=True)
        result["autoencoders"][stem] = entry
    result["seconds"] = round(time.perf_counter() - began, 1)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
