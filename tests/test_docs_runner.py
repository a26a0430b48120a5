"""Tests of the Markdown code block extractor and runner used by test_docs.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from docs_blocks import (
    CodeBlock,
    DocsBlockError,
    DocsBlockFailure,
    extract_python_blocks,
    find_markdown_files,
    run_blocks,
)

TWO_BLOCKS = """\
# Title

```python
x = 1
```

Some text.

```python
y = x + 1
```
"""


def test_extract_blocks_in_document_order() -> None:
    blocks = extract_python_blocks(TWO_BLOCKS, "doc.md")

    assert [block.code for block in blocks] == ["x = 1\n", "y = x + 1\n"]


def test_extract_fence_line_numbers() -> None:
    blocks = extract_python_blocks(TWO_BLOCKS, "doc.md")

    assert [block.line for block in blocks] == [3, 9]
    assert [block.location for block in blocks] == ["doc.md:3", "doc.md:9"]


def test_extract_ignores_other_languages() -> None:
    text = """\
```sh
pip install .
```

```
no language
```

```pycon
>>> 1 + 1
```

~~~json
{"a": 1}
~~~

```python
z = 3
```
"""
    blocks = extract_python_blocks(text, "doc.md")

    assert len(blocks) == 1
    assert blocks[0].code == "z = 3\n"
    assert blocks[0].line == 17


def test_extract_skip_info_string() -> None:
    text = '```python skip="needs a GPU"\nimport cuda_only\n```\n'

    (block,) = extract_python_blocks(text, "doc.md")

    assert block.skip_reason == "needs a GPU"
    assert not block.slow


def test_extract_skip_comment() -> None:
    text = "<!-- docs-test: skip downloads a data set -->\n```python\nfetch()\n```\n"

    (block,) = extract_python_blocks(text, "doc.md")

    assert block.skip_reason == "downloads a data set"
    assert block.line == 2


def test_extract_skip_comment_applies_to_next_block_only() -> None:
    text = "<!-- docs-test: skip slow network -->\n```python\na = 1\n```\n```python\nb = 2\n```\n"

    first, second = extract_python_blocks(text, "doc.md")

    assert first.skip_reason == "slow network"
    assert second.skip_reason is None


def test_extract_slow_marker() -> None:
    text = "```python slow\ntrain()\n```\n```python\nquick()\n```\n"

    slow_block, quick_block = extract_python_blocks(text, "doc.md")

    assert slow_block.slow
    assert slow_block.skip_reason is None
    assert not quick_block.slow


def test_extract_slow_and_skip_together() -> None:
    text = '```python slow skip="takes an hour"\ntrain()\n```\n'

    (block,) = extract_python_blocks(text, "doc.md")

    assert block.slow
    assert block.skip_reason == "takes an hour"


def test_extract_longer_fence_contains_short_fence() -> None:
    text = "````python\ns = '''\n```\n'''\n````\n"

    (block,) = extract_python_blocks(text, "doc.md")

    assert block.code == "s = '''\n```\n'''\n"


def test_extract_tilde_fence() -> None:
    text = "~~~python\nvalue = 5\n~~~\n"

    (block,) = extract_python_blocks(text, "doc.md")

    assert block.code == "value = 5\n"


def test_extract_indented_fence_is_dedented() -> None:
    text = "1. Step one:\n\n   ```python\n   if True:\n       n = 1\n   ```\n"

    (block,) = extract_python_blocks(text, "doc.md")

    assert block.code == "if True:\n    n = 1\n"
    assert block.line == 3


def test_extract_skips_fence_bodies_of_other_languages() -> None:
    # The python fence inside a markdown example must not be extracted.
    text = "````markdown\n```python\nnot_run()\n```\n````\n"

    assert extract_python_blocks(text, "doc.md") == []


def test_extract_inline_backticks_not_a_fence() -> None:
    text = "Write ```python``` in the info string.\n```python\nreal = 1\n```\n"

    (block,) = extract_python_blocks(text, "doc.md")

    assert block.code == "real = 1\n"
    assert block.line == 2


def test_extract_empty_text() -> None:
    assert extract_python_blocks("", "doc.md") == []


def test_extract_empty_block() -> None:
    (block,) = extract_python_blocks("```python\n```\n", "doc.md")

    assert block.code == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("```python\nx = 1\n", r"doc\.md:1: code fence '```' is never closed"),
        ("```python fast\nx = 1\n```\n", r"doc\.md:1: unknown word 'fast'"),
        ('```python skip=""\nx = 1\n```\n', r"doc\.md:1: skip needs a reason"),
        ('```python skip="open\nx = 1\n```\n', r"doc\.md:1: invalid info string"),
        ("<!-- docs-test: skip -->\n```python\nx = 1\n```\n", r"doc\.md:1: .*needs a reason"),
        ("<!-- docs-test: slow -->\n```python\nx = 1\n```\n", r"unknown docs-test directive"),
        ("<!-- docs-test: skip why -->\n\n```python\nx = 1\n```\n", r"doc\.md:1: .*not directly"),
        ("<!-- docs-test: skip why -->\n```sh\nls\n```\n", r"doc\.md:1: .*not directly"),
        ("text\n<!-- docs-test: skip why -->\n", r"doc\.md:2: .*not directly"),
    ],
    ids=[
        "unclosed-fence",
        "unknown-word",
        "empty-skip-reason",
        "unbalanced-quote",
        "comment-without-reason",
        "unknown-directive",
        "comment-before-blank-line",
        "comment-before-shell-block",
        "comment-at-end",
    ],
)
def test_extract_rejects_invalid_markup(text: str, message: str) -> None:
    with pytest.raises(DocsBlockError, match=message):
        extract_python_blocks(text, "doc.md")


def test_find_markdown_files(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# readme\n")
    (tmp_path / "docs" / "guide").mkdir(parents=True)
    (tmp_path / "docs" / "b.md").write_text("b\n")
    (tmp_path / "docs" / "guide" / "a.md").write_text("a\n")
    (tmp_path / "docs" / "notes.txt").write_text("not markdown\n")

    found = find_markdown_files(tmp_path)

    relative = [path.relative_to(tmp_path).as_posix() for path in found]
    assert relative == ["README.md", "docs/b.md", "docs/guide/a.md"]


def test_find_markdown_files_without_docs(tmp_path: Path) -> None:
    assert find_markdown_files(tmp_path) == []


def test_run_blocks_share_namespace(tmp_path: Path) -> None:
    blocks = extract_python_blocks(TWO_BLOCKS, "doc.md")
    path = tmp_path / "doc.md"
    path.write_text(TWO_BLOCKS)
    module_name = "docs_test_shared_namespace"

    skipped = run_blocks(blocks, path, module_name)

    assert skipped == []
    assert module_name not in sys.modules


def test_run_blocks_registers_module_for_dataclasses(tmp_path: Path) -> None:
    code = (
        "import dataclasses, pickle\n"
        "@dataclasses.dataclass\n"
        "class Point:\n"
        "    x: int\n"
        "assert pickle.loads(pickle.dumps(Point(1))) == Point(1)\n"
    )
    blocks = [CodeBlock(source="doc.md", line=1, code=code)]

    assert run_blocks(blocks, tmp_path / "doc.md", "docs_test_dataclass") == []


def test_run_blocks_skips_marked_blocks(tmp_path: Path) -> None:
    blocks = [
        CodeBlock(source="doc.md", line=1, code="ran = []\n"),
        CodeBlock(source="doc.md", line=5, code="raise RuntimeError\n", skip_reason="broken"),
        CodeBlock(source="doc.md", line=9, code="ran.append(1)\nassert ran == [1]\n"),
    ]

    skipped = run_blocks(blocks, tmp_path / "doc.md", "docs_test_skipped")

    assert skipped == [blocks[1]]


def test_run_blocks_failure_names_block_and_line(tmp_path: Path) -> None:
    text = "```python\na = 1\n```\n\n```python\nb = a + 1\nraise ValueError(f'b is {b}')\n```\n"
    path = tmp_path / "guide.md"
    path.write_text(text)
    blocks = extract_python_blocks(text, "docs/guide.md")

    with pytest.raises(DocsBlockFailure) as caught:
        run_blocks(blocks, path, "docs_test_failure")

    assert caught.value.block is blocks[1]
    assert isinstance(caught.value.error, ValueError)
    message = str(caught.value)
    assert "code block at docs/guide.md:5 failed" in message
    # The traceback points at the Markdown line of the raise statement.
    assert f'File "{path}", line 7' in message
    assert "ValueError: b is 2" in message
    assert "docs_test_failure" not in sys.modules


def test_run_blocks_syntax_error_names_line(tmp_path: Path) -> None:
    text = "text\n```python\nok = 1\ndef broken(:\n```\n"
    path = tmp_path / "doc.md"
    path.write_text(text)
    blocks = extract_python_blocks(text, "doc.md")

    with pytest.raises(DocsBlockFailure) as caught:
        run_blocks(blocks, path, "docs_test_syntax")

    assert isinstance(caught.value.error, SyntaxError)
    assert caught.value.error.lineno == 4
