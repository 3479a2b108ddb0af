"""Where the shipped models stand: the book's targets against the benchmarks' measured numbers.

Reads ``benchmarks/results/{world,autoencoders,tasks_monl}.json`` (written by ``bench_world.py``,
``bench_autoencoders.py`` and ``bench_tasks.py``) and renders one Markdown table per stage, each
row a measured number, its target and whether it is met; then, from ``chapters_cpu.json``
(``bench_chapters.py``), how long each chapter takes on a laptop. The tables live in ``book/intro.md``
between two marker comments; ``tests/test_scoreboard.py`` fails when they no longer match the
json, so a re-measured benchmark cannot leave the book's front page stale.

    python benchmarks/scoreboard.py           # print the tables
    python benchmarks/scoreboard.py --write   # rewrite them in book/intro.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
INTRO = ROOT / "book" / "intro.md"
START, END = "<!-- scoreboard:start -->", "<!-- scoreboard:end -->"

MET, MISSED, NONE = "✔", "✘", ""
FRAME_MS = 1000 / 8  # one video frame at 8 fps


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def within(reconstructed: float, original: float, points: float = 2.0) -> str:
    """The autoencoders' target: a probe on reconstructions within `points` of the same probe on originals."""
    return MET if 100 * (original - reconstructed) <= points + 1e-9 else MISSED


def at_least(value: float, target: float) -> str:
    return MET if value >= target - 1e-9 else MISSED


def at_most(value: float, target: float) -> str:
    return MET if value <= target + 1e-9 else MISSED


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def autoencoder_rows(ae: dict) -> list[list[str]]:
    video, audio = ae["video"], ae["audio"]
    vo, vr = video["probes_original"], video["probes_reconstructed"]
    ao, ar = audio["probes_original"], audio["probes_reconstructed"]
    rows = [["video PSNR", "", f"{video['psnr_db']:.2f} dB", "≥ 30 dB", at_least(video["psnr_db"], 30.0)]]
    for key, name in [("video_shape", "video: shape"), ("video_colour", "video: colour"), ("video_size", "video: size"),
                      ("video_background", "video: background"),
                      ("video_bounces_within_1_frame", "video: bounces (±1 frame)")]:
        rows.append([name, pct(vo[key]), pct(vr[key]), "≤ 2 points below the originals", within(vr[key], vo[key])])
    rows.append(["audio log-mel L1", "", f"{audio['log_mel_l1']:.4f}", "", NONE])
    for key, name in [("audio_timbre", "audio: timbre"), ("audio_size", "audio: pitch (size)"),
                      ("audio_background", "audio: drone (background)")]:
        rows.append([name, pct(ao[key]), pct(ar[key]), "≤ 2 points below the originals", within(ar[key], ao[key])])
    rows.append(["audio: impacts found", pct(ao["onset_recall"]), pct(ar["onset_recall"]), "", NONE])
    return rows


TASK_ROWS = [  # (task, key in tasks_*.json, what must agree, kind of target)
    ("a2v", "video_shape", "shape matches the sound's timbre", "90%"),
    ("a2v", "video_size", "size matches the sound's pitch", "90%"),
    ("a2v", "video_background", "background matches the drone", "90%"),
    ("a2v", "bounces_matched", "bounces on the sound's impacts", "90%"),
    ("a2v", "colour_entropy_bits", "colour (the sound does not say it): entropy of the colours drawn", "entropy"),
    ("v2a", "audio_shape", "timbre matches the object's shape", "90%"),
    ("v2a", "audio_size", "pitch matches the object's size", "90%"),
    ("v2a", "audio_background", "drone matches the background", "90%"),
    ("v2a", "impact_median_error_ms", "impact time vs the video's bounces (median)", "frame"),
    ("v2a", "impact_recall", "impacts heard at the video's bounces (±1 frame)", "%"),
    *[(task, key, what, kind) for task in ("continue_1", "continue_2", "interpolate")
      for key, what, kind in [("video_shape", "shape kept", "90%"), ("video_colour", "colour kept", "90%"),
                              ("video_background", "background kept", "90%"),
                              ("boundary_jump_error_px", "jump at the boundary (trajectory)", "px")]],
    ("joint", "joint_bounces_on_impacts", "bounces on its own impacts", "90%"),
    ("joint", "joint_shape_timbre", "timbre agrees with its own shape (chance: 33%)", "%"),
]
DATA_BITS = 2.585  # the world draws its six colours uniformly: log2(6)


def _value(result: dict | None, task: str, key: str, kind: str) -> tuple[str, str]:
    """The measured number as text, and whether it meets its target (NONE where no target)."""
    if result is None or task not in result["tasks"] or result["tasks"][task].get(key) is None:
        return "", NONE
    x = result["tasks"][task][key]
    if kind == "90%":
        return pct(x), at_least(x, 0.9)
    if kind == "entropy":
        return f"{x:.3f} bits", at_least(x, DATA_BITS - 0.1)
    if kind == "frame":
        return f"{x:.1f} ms", at_most(x, FRAME_MS)
    if kind == "px":
        return f"{x:.2f} px", NONE
    return pct(x), NONE


TARGETS = {"90%": "≥ 90%", "entropy": f"like the data: within 0.1 of {DATA_BITS} bits",
           "frame": f"≤ 1 frame ({FRAME_MS:.0f} ms)", "px": "", "%": ""}


def task_rows(tasks: dict, alternatives: list[tuple[str, dict]] | None = None) -> list[list[str]]:
    """One row per measure: task, what, unguided value, [each alternative's value,] target, met.

    ``alternatives`` are (label, result) pairs of the same model sampled otherwise (with guidance, or
    autoguided). A row is met if any column meets it. When the unguided column misses, the row names
    every column that meets it; when it meets, the row names the columns that miss: the sampling is
    the user's choice per task.
    """
    rows = []
    for task, key, what, kind in TASK_ROWS:
        plain, plain_met = _value(tasks, task, key, kind)
        row, met = [task, what, plain], plain_met
        verdicts = []
        for label, result in alternatives or []:
            value, verdict = _value(result, task, key, kind)
            row.append(value)
            verdicts.append((label, verdict))
        meeting = [label for label, verdict in verdicts if verdict == MET]
        missing = [label for label, verdict in verdicts if verdict == MISSED]
        if plain_met == MISSED:
            met = f"{MET} {', '.join(meeting)}" if meeting else MISSED
        elif plain_met == MET and missing:
            met = f"{MET} (not {', '.join(missing)})"
        rows.append(row + [TARGETS[kind], met])
    return rows


ALTERNATIVES = [  # (file, how the scoreboard names a target met only that way)
    ("tasks_monl_w2.json", "at w = 2"),
    ("tasks_monl_auto10k_w3.json", "autoguided"),
]


def alternative_results(results: Path, tasks: dict) -> list[tuple[str, dict]]:
    """The same model sampled otherwise, where it was measured on every task through the same autoencoders."""
    found = []
    for name, label in ALTERNATIVES:
        path = results / name
        if not path.exists():
            continue
        other = json.loads(path.read_text())
        same = (other.get("autoencoders") == tasks.get("autoencoders") and other.get("clips") == tasks.get("clips")
                and other.get("pipeline") == tasks.get("pipeline") and {task for task, *_ in TASK_ROWS} <= set(other["tasks"]))
        if same:
            found.append((label, other))
    return found


def column_name(result: dict) -> str:
    """How a table column names the sampling of a result: its guidance weight, and its guide if autoguided."""
    guide = result.get("autoguide")
    return f"w = {result['guidance']:g}" if guide is None else f"w = {result['guidance']:g}, guided by `{guide['pipeline']}`"


def render(results: Path = RESULTS) -> str:
    world = json.loads((results / "world.json").read_text())
    ae = json.loads((results / "autoencoders.json").read_text())
    tasks = json.loads((results / "tasks_monl.json").read_text())
    alternatives = alternative_results(results, tasks)
    ae_rows, t_rows = autoencoder_rows(ae), task_rows(tasks, alternatives)
    probes = world["probe_scores"]
    video_scores = [pct(probes[k]) for k in ("video_shape", "video_colour", "video_size", "video_background")]
    seen = f"{video_scores[0]} each" if len(set(video_scores)) == 1 else ", ".join(video_scores)
    shape_missed = [row[-1] == MISSED for row in ae_rows if row[0] == "video: shape"]
    shape_missed += [row[-1] == MISSED for row in t_rows if row[1].startswith("shape")]
    hard = ("The shape is the hard one at both stages: the video decoder still draws some of the smallest squares "
            "and triangles round (chapter 3, \"The smallest objects\"), and the small model's generated latents "
            "carry the shape far less often than the true ones (chapter 8); a generator that drew every object "
            "round would score about 38.5% on the tasks' shape, the share of circles among their clips. ")
    hard = hard if all(shape_missed) else ""
    hits = sum(row[-1].startswith(MET) for row in ae_rows + t_rows)
    targets = sum(row[-1] != NONE for row in ae_rows + t_rows)
    header = ["task", "what must agree", column_name(tasks), *[column_name(r) for _, r in alternatives], "target", "met"]
    ways = {"at w = 2": "with MoNL's guidance (the condition cells at t = T in the second branch), `tasks_monl_w2.json`",
            "autoguided": "and autoguided, the second branch a weaker model of the same run (chapter 8, \"Guided by a "
                          "weaker self\"), `tasks_monl_auto10k_w3.json`"}
    sampling = (f"guidance {tasks['guidance']:g}" if not alternatives else
                f"without guidance (w = {tasks['guidance']:g}); " + "; ".join(ways[label] for label, _ in alternatives)
                + "; the sampling is the user's choice per task")
    def threads(result: dict) -> str:
        n = result.get("threads", 1)
        return {1: "one CPU thread", 2: "two CPU threads"}.get(n, f"{n} CPU threads")

    speed_guided = "".join(f"; {r['tasks']['a2v']['clips_per_second']:.1f} clips/s {label} ({threads(r)}, two network "
                           "calls a step)" for label, r in alternatives)
    parts = [
        f"Every percentage below is read by chapter 1's probes. Against the world's ground truth on {world['clips']} "
        f"held-out `{world['split']}` clips (`bench_world.py`) they get the shape, colour, size and background right "
        f"from the pixels ({seen}), and the timbre and pitch from the waveform ({pct(probes['audio_timbre'])} and "
        f"{pct(probes['audio_size'])}).",
        "",
        f"**The autoencoders** (chapters 2-3; {ae['video']['val_clips']} held-out `val` clips, `bench_autoencoders.py`; "
        f"video AE `{tasks['autoencoders']['video_ae']}`, audio AE `{tasks['autoencoders']['audio_ae']}`):",
        "",
        table(["measure", "originals", "reconstructions", "target", "met"], ae_rows),
        "",
        f"**Every task from one model** (chapter 8; the shipped `avdit_{tasks['pipeline']}`, "
        f"{tasks['clips']} held-out `test` clips per task, DDIM {tasks['steps']} steps, {sampling}; `bench_tasks.py`):",
        "",
        table(header, t_rows),
        "",
        f"{hits} of {targets} targets met. {hard}Sampling speed: {tasks['tasks']['a2v']['clips_per_second']:.1f} clips/s "
        f"({tasks['steps']} DDIM steps, {threads(tasks)}){speed_guided}.",
    ]
    chapters = chapter_times(results)
    if chapters:
        parts += ["", chapters]
    return "\n".join(parts)


def chapter_times(results: Path = RESULTS, name: str = "chapters_cpu.json") -> str:
    """One line: how long each chapter takes top to bottom in the `cpu` profile (``bench_chapters.py``)."""
    path = results / name
    if not path.exists():
        return ""
    run = json.loads(path.read_text())
    if not run["chapters"] or not all(c["ok"] for c in run["chapters"]):
        failed = [c["chapter"] for c in run["chapters"] if not c["ok"]]
        raise ValueError(f"{path} records failed chapters {failed}: fix them and run bench_chapters.py again")
    times = ", ".join(f"{int(c['chapter'][:2])}: {c['seconds'] / 60:.1f}" for c in run["chapters"])
    return (f"**Each chapter on a laptop** (`bench_chapters.py`: top to bottom in the `{run['profile']}` profile with "
            f"papermill, {run['threads']} thread{'s' if run['threads'] > 1 else ''}, {run['machine'].split(',')[1].strip()}; "
            f"shipped weights): minutes per chapter {times}; {run['total_seconds'] / 60:.0f} minutes for the whole book.")


def replace_block(text: str, block: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"{INTRO} has no {START} ... {END} block to fill")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}\n{END}{tail}"


def current_block(text: str) -> str:
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite the block in {INTRO.relative_to(ROOT)}")
    args = parser.parse_args()
    block = render()
    if args.write:
        INTRO.write_text(replace_block(INTRO.read_text(), block))
        print(f"wrote the scoreboard into {INTRO.relative_to(ROOT)}")
    else:
        print(block)


if __name__ == "__main__":
    main()
