"""The front page's scoreboard (book/intro.md) is the benchmarks' json, rendered: never typed by hand."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("scoreboard", ROOT / "benchmarks" / "scoreboard.py")
scoreboard = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scoreboard)


def test_intro_scoreboard_matches_the_benchmark_results():
    written = scoreboard.current_block(scoreboard.INTRO.read_text())
    assert written == scoreboard.render(), (
        "book/intro.md's scoreboard is stale: run `python benchmarks/scoreboard.py --write`")


def test_targets_are_judged_by_their_own_rule():
    assert scoreboard.within(0.985, 1.0) == scoreboard.MET      # 1.5 points below the originals
    assert scoreboard.within(0.979, 1.0) == scoreboard.MISSED   # 2.1 points below
    assert scoreboard.within(0.998, 0.994) == scoreboard.MET    # better than the originals
    assert scoreboard.at_least(0.9, 0.9) == scoreboard.MET
    assert scoreboard.at_most(126.0, scoreboard.FRAME_MS) == scoreboard.MISSED


def test_every_row_that_has_a_target_is_judged():
    results = {name: json.loads((scoreboard.RESULTS / f"{name}.json").read_text())
               for name in ("autoencoders", "tasks_monl")}
    rows = scoreboard.autoencoder_rows(results["autoencoders"]) + scoreboard.task_rows(results["tasks_monl"])
    for row in rows:
        assert (row[3] == "") == (row[4] == scoreboard.NONE), row
    rendered = scoreboard.render()
    judged = sum(row[4] != scoreboard.NONE for row in rows)
    assert rendered.count("✘") + rendered.count("✔") == judged
    assert f"of {judged} targets met" in rendered


def test_a_missing_block_is_a_clear_error():
    with pytest.raises(ValueError, match="scoreboard:start"):
        scoreboard.replace_block("no markers here", "table")


def test_a_guided_run_meets_a_target_only_where_it_does(tmp_path):
    tasks = json.loads((scoreboard.RESULTS / "tasks_monl.json").read_text())
    guided = json.loads(json.dumps(tasks))
    guided["guidance"] = 2.0
    guided["tasks"]["a2v"]["bounces_matched"] = 0.95      # met only with guidance
    guided["tasks"]["a2v"]["video_shape"] = 0.10          # worse with guidance: the unguided row still stands
    auto = json.loads(json.dumps(guided))
    auto.update(guidance=3.0, autoguide={"pipeline": "monl_10k", "trained_steps": 6000})
    auto["tasks"]["a2v"]["bounces_matched"] = 0.5         # the autoguided column misses what w = 2 meets
    auto["tasks"]["v2a"]["audio_shape"] = 0.95            # and meets what nothing else does
    auto["tasks"]["v2a"]["audio_background"] = 0.5        # and misses what w = 1 meets
    rows = {(r[0], r[1]): r for r in scoreboard.task_rows(tasks, [("at w = 2", guided), ("autoguided", auto)])}
    bounces = rows[("a2v", "bounces on the sound's impacts")]
    assert bounces[2:5] == [scoreboard.pct(tasks["tasks"]["a2v"]["bounces_matched"]), "95.0%", "50.0%"]
    assert bounces[-1] == f"{scoreboard.MET} at w = 2"                   # the only column that meets it
    assert rows[("a2v", "shape matches the sound's timbre")][-1] == scoreboard.MISSED
    assert rows[("v2a", "timbre matches the object's shape")][-1] == f"{scoreboard.MET} autoguided"
    assert rows[("v2a", "drone matches the background")][-1] == f"{scoreboard.MET} (not autoguided)"
    auto["tasks"]["a2v"]["bounces_matched"] = 0.99                          # met by both guided columns: both named
    both = {(r[0], r[1]): r for r in scoreboard.task_rows(tasks, [("at w = 2", guided), ("autoguided", auto)])}
    assert both[("a2v", "bounces on the sound's impacts")][-1] == f"{scoreboard.MET} at w = 2, autoguided"
    assert scoreboard.column_name(auto) == "w = 3, guided by `monl_10k`" and scoreboard.column_name(guided) == "w = 2"
    # a file measured through other autoencoders, of another model, or on fewer tasks, is left out
    name = scoreboard.ALTERNATIVES[0][0]
    for broken in [{**guided, "autoencoders": {"video_ae": "0" * 12}}, {**guided, "pipeline": "monl_ft"},
                   {**guided, "tasks": {"a2v": guided["tasks"]["a2v"]}}]:
        (tmp_path / name).write_text(json.dumps(broken))
        assert scoreboard.alternative_results(tmp_path, tasks) == []
    (tmp_path / name).write_text(json.dumps(guided))
    assert [label for label, _ in scoreboard.alternative_results(tmp_path, tasks)] == [scoreboard.ALTERNATIVES[0][1]]


def test_chapter_times_refuse_a_run_with_a_failed_chapter(tmp_path):
    run = {"profile": "cpu", "threads": 1, "machine": "x86_64, 2 cores, Linux", "total_seconds": 90.0,
           "chapters": [{"chapter": "01_world", "seconds": 30.0, "ok": True, "error": None},
                        {"chapter": "02_audio", "seconds": 60.0, "ok": True, "error": None}]}
    (tmp_path / "chapters_cpu.json").write_text(json.dumps(run))
    assert "1: 0.5, 2: 1.0; 2 minutes for the whole book" in scoreboard.chapter_times(tmp_path)
    run["chapters"][1].update(ok=False, error="cell 3: ValueError")
    (tmp_path / "chapters_cpu.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match="02_audio"):
        scoreboard.chapter_times(tmp_path)
    assert scoreboard.chapter_times(tmp_path / "nowhere") == ""
