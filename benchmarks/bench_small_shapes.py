"""Where the video autoencoder loses the shape, by object size (chapter 3, "The smallest objects").

    python benchmarks/bench_small_shapes.py --clips 500 --threads 2

The shape probe reads the shipped decoder's reconstructions right for 91% of held-out clips (the first GPU
decoder's: 83%); this asks which clips the others are. For each true shape and size (radius 4, 6, 8 px) it counts how often:

* the probe names the shape of the original clip (the probe's own ceiling);
* chapter 3's small shape reader (two 3 x 3 convolutions per latent frame, a max over the clip,
  trained on ``--train-clips`` training clips' latents) names it from the latent: is the shape *in*
  the latent? And a deeper reader (three layers, the first seeing two latent frames, a cosine
  learning rate), trained on the same clips: how much more can a stronger reader find?
* the probe names it from the shipped decoder's reconstruction: does the decoder *draw* it?
  With ``--earlier STEM``, also from that decoder's (an earlier decoder of the same encoder: chapter 3's
  first GPU decoder, before "Every object weighs the same").

Writes ``benchmarks/results/small_shapes.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from avdit_mini import probes
from avdit_mini.checkpoints import sha256
from avdit_mini.data import SHAPES, SIZES, WorldDataset, collate
from avdit_mini.pipeline import CHECKPOINTS, load_autoencoder, load_pipeline

from bench_decoders import right_by_shape_and_size
from bench_noise_levels import encode, factor_labels, train_reader  # chapter 3's latent reader


def train_deep_reader(latents: torch.Tensor, labels: torch.Tensor, steps: int, width: int = 64) -> nn.Module:
    """A deeper reader than chapter 3's: three 3 x 3 convolutions (the first over two latent frames), a max, a linear layer."""
    torch.manual_seed(0)
    reader = nn.Sequential(nn.Conv3d(latents.shape[1], width, (2, 3, 3), padding=(0, 1, 1)), nn.SiLU(),
                           nn.Conv3d(width, width, (1, 3, 3), padding=(0, 1, 1)), nn.SiLU(),
                           nn.Conv3d(width, width, (1, 3, 3), padding=(0, 1, 1)), nn.SiLU(),
                           nn.AdaptiveMaxPool3d(1), nn.Flatten(), nn.Linear(width, len(SHAPES)))
    return train_reader(latents, labels, "video", len(SHAPES), steps, reader=reader, cosine=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=500, help="held-out (test) clips")
    parser.add_argument("--train-clips", type=int, default=6000, help="clips the latent readers learn from")
    parser.add_argument("--reader-steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--earlier", default=None, metavar="STEM",
                        help="also probe this decoder's reconstructions (its encoder must be the shipped one's)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "small_shapes.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    pipeline = load_pipeline("monl", vocoder="griffin-lim").eval()
    earlier = None
    if args.earlier:
        earlier = load_autoencoder("video", Path(args.earlier).parent, name=Path(args.earlier).name).eval()
        shipped_encoder = {k: v for k, v in pipeline.video_ae.state_dict().items() if k.startswith("encoder.")}
        if any(not torch.equal(v, earlier.state_dict()[k]) for k, v in shipped_encoder.items()):
            raise ValueError(f"--earlier {args.earlier}: its encoder is not the shipped one's, so its latents differ")
    with torch.no_grad():
        train, train_factors = encode(pipeline, "train", args.train_clips)
    labels = factor_labels(train_factors, "shape")
    reader = train_reader(train.video, labels, "video", len(SHAPES), args.reader_steps)
    deep_reader = train_deep_reader(train.video, labels, args.reader_steps)
    # held-out clips: the probe on the original, the reader on its latent, the probe on its reconstruction
    dataset, rows = WorldDataset(args.clips, "test"), []
    for start in range(0, args.clips, 50):
        batch = collate([dataset[i] for i in range(start, min(args.clips, start + 50))])
        with torch.no_grad():
            latents = pipeline.encode(batch["video"], batch["audio"])  # unit variance, as the reader learnt them
            read, read_deep = reader(latents.video).argmax(1), deep_reader(latents.video).argmax(1)
            decoded, _ = pipeline.decode(latents, audio=False)
            if earlier is not None:
                pipeline.video_ae, shipped_ae = earlier, pipeline.video_ae
                decoded_earlier, _ = pipeline.decode(latents, audio=False)
                pipeline.video_ae = shipped_ae
        for k, (video, recon, guess, deep, f) in enumerate(zip(batch["video"], decoded, read.tolist(), read_deep.tolist(),
                                                               batch["factors"])):
            rows.append({"shape": f["shape"], "size": f["size"], "original": probes.measure_video(video)["shape"],
                         "reader": SHAPES[guess], "reader_deep": SHAPES[deep],
                         "reconstruction": probes.measure_video(recon)["shape"]})
            if earlier is not None:
                rows[-1]["reconstruction_earlier"] = probes.measure_video(decoded_earlier[k])["shape"]
    columns = ["original", "reader", "reader_deep", "reconstruction"] + (["reconstruction_earlier"] if earlier is not None else [])
    table = {what: right_by_shape_and_size(rows, [r[what] for r in rows]) for what in columns}
    share = lambda what, k: float(np.mean([r[what] == r["shape"] for r in rows if r["size"] == k]))  # noqa: E731
    result = {
        "clips": args.clips, "train_clips": args.train_clips, "reader_steps": args.reader_steps,
        "video_ae": sha256(CHECKPOINTS / "video_ae.safetensors")[:12], "sizes_px": list(SIZES),
        **({"earlier_video_ae": sha256(Path(args.earlier).with_suffix(".safetensors"))[:12]} if earlier is not None else {}),
        "right_by_shape_and_size": table,
        "right_by_size": {what: [share(what, k) for k in range(len(SIZES))] for what in table},
        "right": {what: float(np.mean([r[what] == r["shape"] for r in rows])) for what in table},
        "seconds": round(time.perf_counter() - began, 1),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
