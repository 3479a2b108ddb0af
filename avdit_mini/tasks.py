"""Every audiovisual task as a condition pattern over the M x N grid, and ``generate`` (chapter 8).

A task is a boolean pattern [M, N]: True = condition cell (held clean at t = 0), False = generate.
Row 0 is video, row 1 audio; column n is time segment n. One MoNL model does all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .diffusion import Latents
from .latents import AUDIO, VIDEO


def pattern(video_row: str, audio_row: str) -> torch.Tensor:
    """A pattern from two strings of C (condition) and G (generate), e.g. ``pattern("CGGGG", "CCCCC")``."""
    rows = []
    for name, row in (("video", video_row), ("audio", audio_row)):
        if set(row.upper()) - {"C", "G"}:
            raise ValueError(f"the {name} row {row!r} may only hold C (condition) and G (generate)")
        rows.append([c == "C" for c in row.upper()])
    if len(rows[0]) != len(rows[1]):
        raise ValueError(f"both rows need the same number of segments, got {video_row!r} and {audio_row!r}")
    return torch.tensor(rows, dtype=torch.bool)


TASKS: dict[str, torch.Tensor] = {
    "joint": pattern("GGGGG", "GGGGG"),
    "a2v": pattern("GGGGG", "CCCCC"),
    "v2a": pattern("CCCCC", "GGGGG"),
    "continue_1": pattern("CGGGG", "CGGGG"),
    "continue_2": pattern("CCGGG", "CCGGG"),
    "interpolate": pattern("CGGGC", "CGGGC"),
    "a2v_continue": pattern("CGGGG", "CCCCC"),
}


def describe(task_pattern: torch.Tensor) -> str:
    """The pattern as two rows of C/G, e.g. ``'V CGGGG | A CCCCC'``."""
    rows = ["".join("C" if c else "G" for c in row.tolist()) for row in task_pattern]
    return f"V {rows[VIDEO]} | A {rows[AUDIO]}"


def resolve_task(task: str | torch.Tensor, segments: int = 5) -> torch.Tensor:
    """A task name or a pattern -> a checked boolean pattern [2, N]."""
    if isinstance(task, str):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)} or pass a [2, {segments}] "
                             "boolean pattern (True = condition), e.g. tasks.pattern('CGGGG', 'CCCCC')")
        return TASKS[task]
    task = torch.as_tensor(task)
    if task.shape != (2, segments):
        raise ValueError(f"a task pattern must be [2, {segments}] (rows video, audio; True = condition), "
                         f"got shape {list(task.shape)}")
    return task.bool()


@dataclass
class Generation:
    """What ``generate`` returns: decoded clips (World layout), their latents and the pattern."""

    video: torch.Tensor  # [B, 3, 17, 64, 64] in [0, 1] (or [3, 17, 64, 64] for one clip)
    audio: torch.Tensor  # [B, 34000] in [-1, 1] (or [34000])
    latents: Latents
    pattern: torch.Tensor


def _batched(x: torch.Tensor | None, dims: int) -> tuple[torch.Tensor | None, bool]:
    if x is None:
        return None, False
    return (x[None], True) if x.dim() == dims else (x, False)


def generate(pipeline, task: str | torch.Tensor, condition: dict | None = None, steps: int = 50,
             guidance: float = 1.0, seed: int = 0, batch_size: int | None = None, sampler: str = "ddim",
             eta: float = 0.0, guidance_drop: torch.Tensor | None = None, progress: bool = False,
             guide=None, start_step: int | None = None) -> Generation:
    """Run a task with a pipeline (chapter 8).

    ``condition`` holds ``"video"`` [3, 17, 64, 64] / [B, ...] and/or ``"audio"`` [34000] / [B, 34000]:
    every modality with a condition cell in the pattern must be given. Condition cells are kept
    bit-identical in the latents; the decoded clip is the autoencoders' view of them.
    ``guide``: a weaker pipeline of the same latents (e.g. ``load_pipeline("monl_10k")``) for
    autoguidance with weight ``guidance`` (see :meth:`GridDiffusion.sample`); default: MoNL's
    unconditional branch. ``start_step`` (SDEdit): the target cells start from the condition clip's own
    latents noised to that step instead of pure noise, so ``condition`` must then hold both modalities.
    """
    task_pattern = resolve_task(task, pipeline.geometry.segments)
    guide_model = None
    if guide is not None:
        ours, theirs = pipeline.scaler.state_dict(), guide.scaler.state_dict()
        if set(ours) != set(theirs) or any(not torch.equal(ours[k].cpu(), theirs[k].cpu()) for k in ours):
            raise ValueError("the guide pipeline scales its latents differently: autoguidance needs a weaker model "
                             "of the same latents (trained from the same start, e.g. monl_10k for monl)")
        if guide.diffusion.prediction != pipeline.diffusion.prediction or guide.avdit.config.T != pipeline.avdit.config.T:
            raise ValueError("the guide pipeline predicts another target or has another T than the model it guides")
        if guide.geometry != pipeline.geometry:
            raise ValueError("the guide pipeline has another geometry (clip length, latent sizes) than the model it guides")
        if guide.device != pipeline.device:
            raise ValueError(f"the guide is on {guide.device} and the model on {pipeline.device}: load the guide with "
                             f"load_pipeline(..., device={str(pipeline.device)!r})")
        guide_model = guide.avdit
    condition = dict(condition or {})
    unknown = set(condition) - {"video", "audio"}
    if unknown:
        raise ValueError(f"condition may hold 'video' and 'audio', not {sorted(unknown)}")
    needs = [name for row, name in ((VIDEO, "video"), (AUDIO, "audio")) if task_pattern[row].any()]
    if start_step is not None:  # the targets start from the clip's own latents: both modalities are needed
        missing = [name for name in ("video", "audio") if condition.get(name) is None]
        if missing:
            raise ValueError(f"start_step (SDEdit) starts the generated cells from the clip's own latents, so condition "
                             f"must hold both 'video' and 'audio'; missing {missing}")
    missing = [name for name in needs if condition.get(name) is None]
    if missing:
        raise ValueError(f"task {describe(task_pattern)} conditions on {needs} but condition lacks {missing}: "
                         f"pass condition={{'{missing[0]}': ...}}")
    g = pipeline.geometry
    video, single_v = _batched(condition.get("video"), 4)
    audio, single_a = _batched(condition.get("audio"), 1)
    if video is not None and tuple(video.shape[1:]) != (3, g.frames, g.height, g.width):
        raise ValueError(f"condition video must be [3, {g.frames}, {g.height}, {g.width}] or batched, got {list(condition['video'].shape)}")
    if audio is not None and audio.shape[-1] != g.audio_samples:
        raise ValueError(f"condition audio must be [{g.audio_samples}] or batched, got {list(condition['audio'].shape)}")
    given = [x.shape[0] for x in (video, audio) if x is not None]
    batch = batch_size or (given[0] if given else 1)
    if any(b != batch for b in given):
        raise ValueError(f"condition batch sizes {given} differ from each other or from batch_size={batch}")
    # modalities that are not conditioned are placeholders: the sampler replaces them with noise
    video = video if video is not None else torch.zeros(batch, 3, g.frames, g.height, g.width)
    audio = audio if audio is not None else torch.zeros(batch, g.audio_samples)
    clean = pipeline.encode(video, audio)
    generator = torch.Generator(device=pipeline.device).manual_seed(seed)
    latents = pipeline.diffusion.sample(
        pipeline.avdit, task_pattern.to(pipeline.device), clean, steps=steps, sampler=sampler, eta=eta,
        guidance=guidance, guidance_drop=guidance_drop, generator=generator, progress=progress, guide_model=guide_model,
        start_step=start_step)
    out_video, out_audio = pipeline.decode(latents)
    single = (single_v or single_a or not given) and batch == 1 and batch_size is None
    if single:
        out_video, out_audio = out_video[0], out_audio[0]
    return Generation(out_video.cpu(), out_audio.cpu(), latents, task_pattern)


def continue_clip(pipeline, video: torch.Tensor, audio: torch.Tensor, windows: int = 2, steps: int = 50,
                  guidance: float = 1.0, seed: int = 0, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rolling continuation beyond 2.125 s: slide the window, keep the last 0.625 s as condition.

    Each window conditions on its first two segments (video frames 0-4, audio 0-0.625 s: the
    ``continue_2`` pattern) taken from the *end* of what was generated so far, and adds 1.5 s.
    Returns video [3, 17 + 12 * windows, 64, 64] and audio [34000 + 24000 * windows].
    """
    g = pipeline.geometry
    keep_frames = 1 + g.video_time_down  # segments 0-1: 5 frames
    shift_frames = g.frames - keep_frames  # 12 frames = 1.5 s
    shift_samples = shift_frames * g.sample_rate // g.fps
    videos, audios = [video], [audio]
    current_video, current_audio = video, audio
    for window in range(windows):
        context_video = torch.cat([current_video[:, shift_frames:], torch.zeros_like(current_video[:, :shift_frames])], 1)
        context_audio = torch.cat([current_audio[shift_samples:], torch.zeros_like(current_audio[:shift_samples])])
        out = generate(pipeline, "continue_2", {"video": context_video, "audio": context_audio}, steps=steps,
                       guidance=guidance, seed=seed + window, progress=progress)
        videos.append(out.video[:, keep_frames:])
        audios.append(out.audio[g.audio_samples - shift_samples:])
        current_video, current_audio = out.video, out.audio
    return torch.cat(videos, dim=1), torch.cat(audios)
