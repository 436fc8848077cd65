"""The repository stands on its own: nothing it runs or cites lives outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from k2.samples import ASX_SAMPLE, BINANCE_EXCHANGE_INFO, SAMPLES_DIR

REPO = Path(__file__).resolve().parents[1]
# What a path outside the checkout looks like: a sibling folder, or an absolute path on a developer's machine.
OUTSIDE = re.compile(r"\.\./shared|/work/|K2_SHARED_DIR|/home/\w|/Users/\w")
# A cited Markdown file: docs/x.md, bench/RESULTS.md, data/samples/.../README.md (a bare name is relative).
CITED_DOC = re.compile(r"\b((?:docs|bench|data|deploy)/[\w./-]+\.md)\b")


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    files = [REPO / n for n in names if not n.startswith("data/samples/") and not n.endswith((".png", ".js"))]
    return [f for f in files if f.is_file() and f != Path(__file__).resolve()]


def test_no_file_names_a_path_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in _tracked_text_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offenders == []


def test_every_cited_document_exists() -> None:
    missing = sorted(
        {
            f"{path.relative_to(REPO)} cites {cited}"
            for path in _tracked_text_files()
            for cited in CITED_DOC.findall(path.read_text(errors="replace"))
            if not (REPO / cited).exists()
        }
    )
    assert missing == []


def test_the_samples_ship_in_the_repository_with_their_licences() -> None:
    assert SAMPLES_DIR == REPO / "data" / "samples"
    assert sorted(p.name for p in (ASX_SAMPLE / "trades").iterdir()) == ["3153.csv", "7078.csv", "7181.csv", "7458.csv"]
    assert BINANCE_EXCHANGE_INFO.stat().st_size == 27_945
    for readme in ("README.md", "asx/README.md", "binance/README.md"):
        assert "icen" in (SAMPLES_DIR / readme).read_text()  # licence / license
