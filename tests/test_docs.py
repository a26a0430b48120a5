"""Run the Python code blocks of README.md and docs/**/*.md.

There is one test case per Markdown file, because the blocks of a file share one namespace
and run in document order. A file with a ``python slow`` block is marked slow as a whole,
so its other blocks also run only under ``-m slow``. Markup rules are in docs_blocks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from docs_blocks import (
    CodeBlock,
    DocsBlockFailure,
    extract_python_blocks,
    find_markdown_files,
    run_blocks,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _collect_cases() -> list[object]:
    cases: list[object] = []
    for path in find_markdown_files(REPO_ROOT):
        source = path.relative_to(REPO_ROOT).as_posix()
        blocks = extract_python_blocks(path.read_text(encoding="utf-8"), source)
        if not blocks:
            continue
        marks = [pytest.mark.slow] if any(block.slow for block in blocks) else []
        cases.append(pytest.param(path, blocks, id=source, marks=marks))

    if not cases:
        # An explicit skip with a reason reads better in the output than pytest's NOTSET case.
        cases.append(
            pytest.param(
                None,
                [],
                id="no-python-blocks",
                marks=pytest.mark.skip(reason="README.md and docs/ contain no ```python blocks"),
            )
        )
    return cases


@pytest.mark.parametrize(("path", "blocks"), _collect_cases())
def test_markdown_python_blocks(
    path: Path,
    blocks: list[CodeBlock],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    # Blocks that write files write them into a fresh directory, not into the repository.
    monkeypatch.chdir(tmp_path)
    module_name = "docs_" + re.sub(r"\W", "_", path.relative_to(REPO_ROOT).as_posix())

    try:
        skipped = run_blocks(blocks, path, module_name)
    except DocsBlockFailure as failure:
        message = str(failure)
    else:
        message = ""
    # Failing outside the except clause keeps pytest from printing the exception chain twice.
    if message:
        pytest.fail(message, pytrace=False)

    reasons = [f"{block.location}: {block.skip_reason}" for block in skipped]
    if len(skipped) == len(blocks):
        pytest.skip("every block is skipped: " + "; ".join(reasons))
    for reason in reasons:
        # conftest.py prints these in the terminal summary.
        record_property("skipped_docs_block", reason)
