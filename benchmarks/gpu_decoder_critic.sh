#!/usr/bin/env bash
# The video decoder's smallest objects, on one lent GPU (chapter 3, "A critic for the corners" and
# "The smallest objects"), prepared to run unattended in about 5 minutes (on an H100: 315 s for the four
# default variants, 265 s for VARIANTS="area strong" WORKERS=7 AE_STEPS=2800 AE_MIN=4.4, the run that made the
# shipped decoder):
#   1. decoder-only fine-tunes of the shipped video AE (encoder frozen: the latents, and every AVDiT
#      trained on them, stay as they are), one per VARIANTS entry, all at once on the one GPU, each at
#      batch BATCH on all 17 frames for at most AE_MIN minutes:
#        plain       the reconstruction loss alone (the control: same steps, data and learning rate)
#        critic      + the patch critic at weight WEIGHT (it learns alone for the first CRITIC_START steps)
#        area        the object's boost scaled by 300 / its pixels (--boost-area 300): a radius-4 object
#                    weighs as much as a radius-8 one, so its one-pixel corners count
#        areacritic  both
#        strong      area, with the object's boost 8 instead of 2
#   2. benchmarks/bench_decoders.py on CLIPS held-out clips: PSNR, the probes (by shape and true size),
#      fill ratios and the shape confusion of each against the shipped decoder -> $OUT/decoder_critic_gpu.json;
#   3. with GENERATED=runs/generated.pt carried along (bench_shape.py --save-latents), the same for a
#      diffusion model's generated latents -> $OUT/shape_<variant>.json;
#   4. every variant's weights and config -> $OUT/<variant>_video_ae.* (split in two when over 16 MB).
# The CPU pilots (decoder_losses.json, decoder_trunk.json: 2,000-2,400 steps of batch 8 on 6 frames) found
# the critic fixes small triangles (2 -> 20 of 24) and breaks small squares (8 -> 1 of 19); a control
# stayed at 83-84%. Each run here sees about 5-10 times as many frames.
# Dry run on a CPU: AE_MIN=0.3 AE_STEPS=12 BATCH=2 CLIPS=16 WORKERS=0 CRITIC_START=4 bash benchmarks/gpu_decoder_critic.sh
set -u
OUT=${OUT:-runs/gpu_out}
WORK=${WORK:-/tmp/gpu_work}
AE_MIN=${AE_MIN:-4.5}
AE_STEPS=${AE_STEPS:-1500}  # the learning rate's schedule; a run stops at AE_MIN minutes if it has not finished
BATCH=${BATCH:-32}
WEIGHT=${WEIGHT:-1.0}
CRITIC_START=${CRITIC_START:-300}
BLOCKS=${BLOCKS:-0}  # --decoder-blocks: residual blocks on the latent grid, added to every run
CLIPS=${CLIPS:-500}
WORKERS=${WORKERS:-3}  # data workers per run (the world is drawn on the CPU)
VARIANTS=${VARIANTS:-plain critic area areacritic}
GENERATED=${GENERATED:-}
source benchmarks/gpu_common.sh

common=(autoencoder --modality video --profile gpu --finetune-decoder data/checkpoints/video_ae --refine-width 24
        --refine-depth 4 --refine-hints 4 --decoder-blocks "$BLOCKS" --edge-weight 0.1 --lr 2e-4 --warmup 100 --steps "$AE_STEPS"
        --batch-size "$BATCH" --workers "$WORKERS" --threads 2 --max-minutes "$AE_MIN" --eval-clips 0
        --save-every-seconds 60 --no-manifest)
critic=(--adversarial "$WEIGHT" --adversarial-start "$CRITIC_START" --critic-lr 1e-3)
area=(--boost-area 300)
stamp "decoder fine-tunes ($VARIANTS): $AE_STEPS steps of $BATCH, at most $AE_MIN min each"
pids=()
for v in $VARIANTS; do
    case $v in
        plain) extra=() ;;
        critic) extra=("${critic[@]}") ;;
        area) extra=("${area[@]}") ;;
        areacritic) extra=("${area[@]}" "${critic[@]}") ;;
        strong) extra=("${area[@]}" --object-boost 8) ;;
        *) echo "unknown variant $v (plain, critic, area, areacritic, strong)"; exit 2 ;;
    esac
    $PY -m avdit_mini.train "${common[@]}" "${extra[@]}" --out "$WORK/$v/video_ae" >"$OUT/log_$v.txt" 2>&1 &
    pids+=($!)
done
wait "${pids[@]}"
for v in $VARIANTS; do echo "$v: $(grep -a "step [0-9]*:\|critic:" "$OUT/log_$v.txt" | tail -n 2 | tr '\n' ' ')"; done
stamp "fine-tunes done"

decoders=(); for v in $VARIANTS; do decoders+=("$WORK/$v/video_ae"); done
$PY benchmarks/bench_decoders.py --clips "$CLIPS" --decoders "${decoders[@]}" --out "$OUT/decoder_critic_gpu.json" \
    >"$OUT/log_bench.txt" 2>&1
tail -n 8 "$OUT/log_bench.txt"
stamp "bench done"
for v in $VARIANTS; do
    cp "$WORK/$v/video_ae.json" "$OUT/${v}_video_ae.json"
    weights="$WORK/$v/video_ae.safetensors"  # 6 MB, 22 MB with BLOCKS=2: a lent machine returns files of at most 16 MiB
    if [ "$(stat -c %s "$weights")" -lt 16000000 ]; then cp "$weights" "$OUT/${v}_video_ae.safetensors"
    else split -n 2 -d -a 1 "$weights" "$OUT/${v}_video_ae.safetensors.part"; fi  # cat <v>_video_ae.safetensors.part* > ...
done
if [ -n "$GENERATED" ] && [ -f "$GENERATED" ]; then
    for v in $VARIANTS; do
        $PY benchmarks/bench_shape.py --models base_scratch small_scratch monl --tasks a2v continue_2 --clips 100 \
            --no-extra --load-latents "$GENERATED" --video-ae "$WORK/$v/video_ae" --out "$OUT/shape_$v.json" \
            >"$OUT/log_shape_$v.txt" 2>&1
        tail -n 2 "$OUT/log_shape_$v.txt"
    done
fi
stamp "done: $OUT"
