"""Where does the audio path lose timbre: the autoencoder or Griffin-Lim? (chapter 2)

    python benchmarks/bench_vocoder.py --clips 300      # writes benchmarks/results/vocoder.json

Runs chapter 1's audio probe on held-out ``val`` clips as recorded, through Griffin-Lim of their own
log-mel (what a perfect autoencoder would give), and through the autoencoder and Griffin-Lim, for a
few numbers of Griffin-Lim rounds -- each with the mel scale inverted by least squares and, where
``data/checkpoints/vocoder`` exists, by the trained post-net (``postnet_*``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from avdit_mini import probes
from avdit_mini.data import WorldDataset
from avdit_mini.pipeline import CHECKPOINTS, load_autoencoder, load_postnet

KEYS = ("audio_timbre", "audio_size", "audio_background", "onset_recall", "onset_median_error_ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--rounds", type=int, nargs="+", default=[32, 128], help="Griffin-Lim rounds (the package uses 32)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ae = load_autoencoder("audio", vocoder="griffin-lim")
    postnet = load_postnet() if (CHECKPOINTS / "vocoder.safetensors").exists() else None
    dataset = WorldDataset(args.clips, "val")
    items = [dataset[i] for i in range(args.clips)]
    audio = torch.stack([item["audio"] for item in items])

    def score(waves: torch.Tensor) -> dict:
        measured = probes.benchmark([{**item, "audio": w} for item, w in zip(items, waves)])
        return {k: round(measured[k], 4) for k in KEYS}

    result = {"clips": args.clips, "original": score(audio)}
    with torch.no_grad():
        log_mel = ae.log_mel(audio)
        decoded = torch.cat([ae.decode(ae.encode_mel(m)) for m in log_mel.split(50)])
        for rounds in args.rounds:
            ae.inverter.griffin_lim.n_iter = rounds
            for name, net in (("griffin_lim", None), ("postnet", postnet)):
                if name == "postnet" and net is None:
                    continue
                ae.inverter.postnet = net
                result[f"{name}_{rounds}_of_original_log_mel"] = score(torch.cat([ae.mel_to_audio(m) for m in log_mel.split(50)]))
                result[f"{name}_{rounds}_of_autoencoder"] = score(torch.cat([ae.mel_to_audio(m) for m in decoded.split(50)]))
            ae.inverter.postnet = None
            print(rounds, {k: v for k, v in result.items() if str(rounds) in k}, flush=True)
    out = Path(__file__).parent / "results" / "vocoder.json"
    if out.exists():  # rows of other numbers of rounds, measured before on the same clips, are kept
        earlier = json.loads(out.read_text())
        if earlier.get("clips") == args.clips:
            result.update({k: v for k, v in earlier.items() if k not in result and not any(f"_{r}_" in k for r in args.rounds)})
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
