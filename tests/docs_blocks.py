"""Extract the fenced Python code blocks of Markdown files and run them in order.

A block is a fence (three or more backticks or tildes) whose info string starts with
``python``. After the language, the info string may contain:

- ``slow`` marks a long block, and the file's test case then carries the ``slow`` marker.
- ``skip="reason"`` keeps the block from running, and the reason is reported.

A line ``<!-- docs-test: skip reason -->`` directly above the fence also skips the block.
Any other word in a Python info string, a skip without a reason, or a ``docs-test``
comment that is not directly above a Python fence raises ``DocsBlockError``, so a typo
cannot silently change what runs.
"""

from __future__ import annotations

import re
import shlex
import sys
import traceback
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PYTHON_LANGUAGE = "python"

_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_DOCS_TEST_COMMENT = re.compile(r"^\s*<!--\s*docs-test:(?P<body>.*?)-->\s*$")


class DocsBlockError(ValueError):
    """Invalid code block markup in a Markdown file."""


@dataclass(frozen=True)
class CodeBlock:
    """One fenced Python block of a Markdown file."""

    source: str  # file name shown in test ids and messages
    line: int  # 1-based line number of the opening fence
    code: str  # block body, with the fence's indentation removed
    skip_reason: str | None = None
    slow: bool = False

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"


class DocsBlockFailure(Exception):
    """A documentation code block raised an exception."""

    def __init__(self, block: CodeBlock, error: Exception) -> None:
        self.block = block
        self.error = error
        # Drop the first frame, which is the exec call in run_blocks.
        frames = error.__traceback__.tb_next if error.__traceback__ else None
        details = "".join(traceback.format_exception(type(error), error, frames)).rstrip()
        super().__init__(f"code block at {block.location} failed:\n{details}")


def extract_python_blocks(text: str, source: str) -> list[CodeBlock]:
    """Return the Python blocks of a Markdown text in document order.

    ``source`` names the file in block locations and error messages. Raises
    ``DocsBlockError`` on an unclosed fence or invalid docs-test markup.
    """
    lines = text.splitlines()
    blocks: list[CodeBlock] = []
    pending_skip: tuple[int, str] | None = None  # (line number, reason) of a skip comment
    index = 0

    while index < len(lines):
        line_number = index + 1
        line = lines[index]

        comment = _DOCS_TEST_COMMENT.match(line)
        if comment is not None:
            _reject_dangling_skip(pending_skip, source)
            pending_skip = (line_number, _parse_skip_comment(comment["body"], source, line_number))
            index += 1
            continue

        opening = _FENCE_OPEN.match(line)
        if opening is None:
            _reject_dangling_skip(pending_skip, source)
            index += 1
            continue

        fence = opening["fence"]
        info = opening["info"].strip()
        if fence[0] == "`" and "`" in info:
            # CommonMark: a backtick fence's info string cannot contain backticks, so this
            # line is inline code, not a fence.
            _reject_dangling_skip(pending_skip, source)
            index += 1
            continue

        body_end = _find_closing_fence(lines, index + 1, fence)
        if body_end is None:
            raise DocsBlockError(f"{source}:{line_number}: code fence {fence!r} is never closed")

        info_words = info.split(maxsplit=1)
        language = info_words[0] if info_words else ""
        attributes = info_words[1] if len(info_words) > 1 else ""
        if language == PYTHON_LANGUAGE:
            skip_reason, slow = _parse_attributes(attributes, source, line_number)
            if pending_skip is not None:
                skip_reason = pending_skip[1]
            body = lines[index + 1 : body_end]
            blocks.append(
                CodeBlock(
                    source=source,
                    line=line_number,
                    code=_dedent_body(body, len(opening["indent"])),
                    skip_reason=skip_reason,
                    slow=slow,
                )
            )
            pending_skip = None
        else:
            _reject_dangling_skip(pending_skip, source)

        index = body_end + 1

    _reject_dangling_skip(pending_skip, source)
    return blocks


def find_markdown_files(root: Path) -> list[Path]:
    """Return root/README.md, if present, and every Markdown file under root/docs/, sorted."""
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    docs_dir = root / "docs"
    if docs_dir.is_dir():
        files.extend(sorted(docs_dir.rglob("*.md")))
    return files


def run_blocks(blocks: Sequence[CodeBlock], path: Path, module_name: str) -> list[CodeBlock]:
    """Execute the blocks in order in one shared module namespace.

    ``path`` is the Markdown file, so tracebacks point at its lines. The namespace is a
    module registered in ``sys.modules`` while the blocks run, which dataclasses, pickle
    and similar tools require of the classes a block defines. Skipped blocks are not run.
    Returns the skipped blocks. Raises ``DocsBlockFailure`` naming the first block that
    raised.
    """
    module = types.ModuleType(module_name)
    module.__file__ = str(path)
    sys.modules[module_name] = module
    skipped: list[CodeBlock] = []
    try:
        for block in blocks:
            if block.skip_reason is not None:
                skipped.append(block)
                continue
            # Leading newlines make line numbers in tracebacks match the Markdown file.
            padded_code = "\n" * block.line + block.code
            try:
                compiled = compile(padded_code, str(path), "exec")
                exec(compiled, module.__dict__)
            except Exception as error:
                raise DocsBlockFailure(block, error) from error
    finally:
        del sys.modules[module_name]
    return skipped


def _find_closing_fence(lines: Sequence[str], start: int, fence: str) -> int | None:
    """Return the index of the line closing ``fence``, searching from ``start``."""
    for index in range(start, len(lines)):
        candidate = lines[index].strip()
        # A closing fence uses the same character, is at least as long, and has no info string.
        if candidate and set(candidate) == {fence[0]} and len(candidate) >= len(fence):
            return index
    return None


def _dedent_body(body: Sequence[str], indent: int) -> str:
    """Remove up to ``indent`` leading whitespace characters from each line of a block."""
    dedented = []
    for line in body:
        stripped = line.lstrip(" \t")
        removable = min(indent, len(line) - len(stripped))
        dedented.append(line[removable:])
    return "\n".join(dedented) + "\n" if dedented else ""


def _parse_attributes(attributes: str, source: str, line_number: int) -> tuple[str | None, bool]:
    """Parse the words after ``python`` in an info string into (skip reason, slow)."""
    try:
        words = shlex.split(attributes)
    except ValueError as error:
        raise DocsBlockError(
            f"{source}:{line_number}: invalid info string {attributes!r}: {error}"
        ) from error

    skip_reason: str | None = None
    slow = False
    for word in words:
        if word == "slow":
            slow = True
        elif word.startswith("skip="):
            skip_reason = word.removeprefix("skip=").strip()
            if not skip_reason:
                raise DocsBlockError(
                    f'{source}:{line_number}: skip needs a reason, as in skip="needs a GPU"'
                )
        else:
            raise DocsBlockError(
                f"{source}:{line_number}: unknown word {word!r} in a python info string. "
                'Expected slow or skip="reason".'
            )
    return skip_reason, slow


def _parse_skip_comment(body: str, source: str, line_number: int) -> str:
    """Return the reason of a ``<!-- docs-test: skip reason -->`` comment."""
    directive, _, reason = body.strip().partition(" ")
    if directive != "skip":
        raise DocsBlockError(
            f"{source}:{line_number}: unknown docs-test directive {directive!r}. "
            "Expected <!-- docs-test: skip reason -->."
        )
    reason = reason.strip()
    if not reason:
        raise DocsBlockError(
            f"{source}:{line_number}: docs-test skip needs a reason, "
            "as in <!-- docs-test: skip needs a GPU -->"
        )
    return reason


def _reject_dangling_skip(pending_skip: tuple[int, str] | None, source: str) -> None:
    if pending_skip is not None:
        raise DocsBlockError(
            f"{source}:{pending_skip[0]}: docs-test skip comment is not directly above "
            "a ```python fence"
        )
