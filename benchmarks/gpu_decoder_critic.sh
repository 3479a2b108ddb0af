#!/usr/bin/env bash
# The video decoder against a patch critic, on one lent GPU (chapter 3, "A critic for the corners"),
# prepared to run unattended in about 8 minutes:
#   1. a decoder-only fine-tune of the shipped video AE (encoder frozen: the latents, and every AVDiT
#      trained on them, stay as they are) with --adversarial W, at batch 32 on all 17 frames, for
#      AE_MIN minutes; a twin run without the critic (same steps, data and learning rate) beside it,
#      so that the difference is the critic's and not the extra steps';
#   2. benchmarks/bench_decoders.py on CLIPS held-out clips: PSNR, the probes, fill ratios and the
#      shape confusion of both against the shipped decoder -> $OUT/decoder_critic_gpu.json;
#   3. with GENERATED=runs/generated.pt carried along (bench_shape.py --save-latents), the same for a
#      diffusion model's generated latents -> $OUT/shape_<run>.json.
# The CPU pilots (benchmarks/results/decoder_losses.json, 40 minutes of one core each) found that the
# critic helps once it has learnt alone for a while and pulls as hard as the reconstruction (W = 1):
# shape 83% -> 88% of 200 clips, triangles fixed, squares not yet, 1.2 dB of PSNR; a control without
# it stayed at 83%. This is the run, about 25 times longer, that can say whether to ship it.
# Dry run on a CPU: AE_MIN=0.3 AE_STEPS=12 BATCH=2 CLIPS=16 WORKERS=0 bash benchmarks/gpu_decoder_critic.sh
set -u
OUT=${OUT:-runs/gpu_out}
WORK=${WORK:-/tmp/gpu_work}
AE_MIN=${AE_MIN:-5}
AE_STEPS=${AE_STEPS:-6000}
BATCH=${BATCH:-32}
WEIGHT=${WEIGHT:-1.0}
BLOCKS=${BLOCKS:-0}  # --decoder-blocks: residual blocks on the latent grid, added to both runs
CLIPS=${CLIPS:-500}
WORKERS=${WORKERS:-6}
GENERATED=${GENERATED:-}
source benchmarks/gpu_common.sh

common=(autoencoder --modality video --profile gpu --finetune-decoder data/checkpoints/video_ae --refine-width 24
        --refine-depth 4 --refine-hints 4 --decoder-blocks "$BLOCKS" --edge-weight 0.1 --lr 2e-4 --warmup 100 --steps "$AE_STEPS"
        --batch-size "$BATCH" --workers "$WORKERS" --threads 2 --max-minutes "$AE_MIN" --eval-clips 0
        --save-every-seconds 60 --no-manifest)
stamp "decoder fine-tunes: with the critic (weight $WEIGHT) and without, $AE_STEPS steps of $BATCH, at most $AE_MIN min each"
$PY -m avdit_mini.train "${common[@]}" --adversarial "$WEIGHT" --adversarial-start 600 --critic-lr 1e-3 \
    --out "$WORK/critic/video_ae" >"$OUT/log_critic.txt" 2>&1 &
critic=$!
$PY -m avdit_mini.train "${common[@]}" --out "$WORK/plain/video_ae" >"$OUT/log_plain.txt" 2>&1
wait $critic
grep -a "critic:\|step [0-9]*:" "$OUT/log_critic.txt" | tail -n 4
stamp "fine-tunes done"

$PY benchmarks/bench_decoders.py --clips "$CLIPS" --decoders "$WORK/critic/video_ae" "$WORK/plain/video_ae" \
    --out "$OUT/decoder_critic_gpu.json" >"$OUT/log_bench.txt" 2>&1
tail -n 4 "$OUT/log_bench.txt"
if [ -n "$GENERATED" ] && [ -f "$GENERATED" ]; then
    for run in critic plain; do
        $PY benchmarks/bench_shape.py --models base_scratch small_scratch monl --tasks a2v continue_2 --clips 100 \
            --no-extra --load-latents "$GENERATED" --video-ae "$WORK/$run/video_ae" --out "$OUT/shape_$run.json" \
            >"$OUT/log_shape_$run.txt" 2>&1
        tail -n 2 "$OUT/log_shape_$run.txt"
    done
fi
cp "$WORK/critic/video_ae.json" "$OUT/critic_video_ae.json"
weights="$WORK/critic/video_ae.safetensors"  # 6 MB, 22 MB with BLOCKS=2: a lent machine returns files of at most 16 MiB
if [ "$(stat -c %s "$weights")" -lt 16000000 ]; then cp "$weights" "$OUT/critic_video_ae.safetensors"
else split -n 2 -d -a 1 "$weights" "$OUT/critic_video_ae.safetensors.part"; fi  # cat critic_video_ae.safetensors.part* > ...
stamp "done: $OUT"
