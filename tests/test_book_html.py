"""The rendered chapter 1, opened in headless Chromium, shows its video player and its figures.

Builds chapter 1 as a single page with Jupyter Book (executed in the current profile), takes a
screenshot with Debian's Chromium and reads the rendered DOM. Skipped when Chromium is missing,
unless AVDIT_REQUIRE_BROWSER=1 (as in CI), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "01_audiovisual_world.ipynb"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=8000"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("AVDIT_REQUIRE_BROWSER") == "1":
        pytest.fail("Chromium is required (AVDIT_REQUIRE_BROWSER=1): apt-get install chromium")
    pytest.skip("Chromium not installed (make test installs it from Debian's packages when run as root)")


@pytest.fixture(scope="module")
def chapter_html(tmp_path_factory) -> SimpleNamespace:
    browser = _chromium()
    out = tmp_path_factory.mktemp("book")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["bibtex_bibfiles"] = [str(ROOT / "book" / "references.bib")]  # a page build runs from book/
    (out / "_config.yml").write_text(yaml.safe_dump(config))
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run(
        [str(jupyter_book), "build", str(CHAPTER), "--config", str(out / "_config.yml"),
         "--path-output", str(out), "-W", "-n", "--keep-going"],
        capture_output=True, text=True, cwd=ROOT, timeout=1200,
    )
    html = out / "_build" / "_page" / CHAPTER.stem / "html" / f"{CHAPTER.stem}.html"
    assert result.returncode == 0 and html.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    return SimpleNamespace(path=html, browser=browser)


def test_rendered_page_has_the_player_and_the_figures(chapter_html):
    dom = subprocess.run([chapter_html.browser, *FLAGS, "--dump-dom", chapter_html.path.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "The audiovisual world" in dom
    players = re.findall(r"<video[^>]*src=\"data:video/mp4;base64,", dom)
    assert len(players) >= 1, "no embedded mp4 player in the rendered chapter"
    figures = re.findall(r"<img[^>]+src=\"[^\"]+\.png\"", dom)
    assert len(figures) >= 8, f"expected the chapter's figures, found {len(figures)} images"
    assert "<audio" in dom  # the three impact sounds


def test_screenshot_is_not_blank(chapter_html, tmp_path):
    from PIL import Image

    shot = tmp_path / "chapter1.png"
    subprocess.run([chapter_html.browser, *FLAGS, f"--screenshot={shot}", "--window-size=1280,4000",
                    chapter_html.path.as_uri()], capture_output=True, timeout=120)
    assert shot.exists(), "Chromium wrote no screenshot"
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    not_white = (pixels.min(axis=-1) < 235).mean()
    distinct = len(np.unique(pixels.reshape(-1, 3)[::7].astype(np.uint8), axis=0))
    assert not_white > 0.05, f"screenshot is nearly blank ({not_white:.1%} non-white pixels)"
    assert distinct > 200, f"screenshot has only {distinct} colours: figures did not render"
    if os.environ.get("AVDIT_SCREENSHOT_DIR"):  # keep the screenshot for a person to look at
        shutil.copy(shot, Path(os.environ["AVDIT_SCREENSHOT_DIR"]) / "chapter1.png")
