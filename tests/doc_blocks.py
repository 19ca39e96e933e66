"""The command blocks of README.md and docs/*.md, read the way a person reads them, for the tests
that run them (tests/test_doc_snippets.py: Python; tests/test_doc_commands.py: bash).

Conventions the pages follow, so that a block's shown output can be checked:
- In a bash block, `# ` lines right under a command (no blank line between) show what that
  command prints; `# ` lines after a blank line describe what follows. A Python block shows
  what it prints in its closing `# ` lines.
- `...` in shown output stands for any text (several lines included); a shown line that starts
  with `...` may carry a remark in parentheses. Whitespace in shown output matches any
  whitespace or none, and a printed line of JSON is compared in its compact form.
- A shown line indented by one more space (`#  ...`) continues the line above: a long answer
  wrapped for the page.
- Hidden directives (HTML comments, invisible on the rendered page) give a page what a reader
  brings along: `<!-- doc-server: key=value ... -->` serves that page's blocks from a server with
  those settings over a copy of the repository; `<!-- doc-run: ARGS -->` runs
  `python -m tests.doc_setup ARGS` before the next block (a photo to upload, a new version).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)
SERVER = re.compile(r"<!-- doc-server:(.*?)-->")
RUN = re.compile(r"<!-- doc-run:(.*?)-->")
HEREDOC = re.compile(r"<<-?\s*'?\"?(\w+)'?\"?")
REMARK = re.compile(r"^\.\.\.\s+\(.*\)$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    text: str
    setup: tuple[str, ...] = ()  # doc-run directives met since the previous block

    @property
    def where(self) -> str:
        return f"{page_name(self.page)}:{self.line}"


def page_name(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name


@dataclass
class Step:
    """One command of a bash block (its continuation and here-document lines included) and
    the output the page shows under it."""

    line: int
    command: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found: list[Block] = []
    last = 0
    for match in FENCE.finditer(text):
        setup = tuple(args.strip() for args in RUN.findall(text, last, match.start()))
        line = text[: match.start()].count("\n") + 1
        found.append(Block(page, line, match.group(1), match.group(2), setup))
        last = match.end()
    return found


def server_settings(page: Path) -> dict[str, str] | None:
    """The page's own server settings (doc-server), None where the default server serves it."""
    found = SERVER.search(page.read_text(encoding="utf-8"))
    if found is None:
        return None
    return dict(pair.split("=", 1) for pair in found.group(1).split())


def swap_addresses(text: str, http: str, grpc: str) -> str:
    """A block for another server: only the documented addresses change (HTTP 127.0.0.1:3000,
    gRPC 127.0.0.1:8001), given as host:port."""
    return text.replace("127.0.0.1:3000", http).replace("127.0.0.1:8001", grpc)


def shown_line(comment: str) -> str:
    return comment[2:] if comment.startswith("# ") else comment[1:]


def add_shown(shown: list[str], comment: str) -> None:
    text = shown_line(comment)
    if text.startswith(" ") and shown:
        shown[-1] += text  # a wrapped line: its leading space separates the two halves
    else:
        shown.append(text)


def bash_steps(block: Block) -> list[Step]:
    steps: list[Step] = []
    heredoc: str | None = None
    continued = False
    under_command = False
    for offset, line in enumerate(block.text.splitlines(), start=1):
        if heredoc is not None:
            steps[-1].command.append(line)
            heredoc = None if line.strip() == heredoc else heredoc
        elif continued:
            steps[-1].command.append(line)
        elif not line.strip():
            under_command = False
        elif line.startswith("#"):
            if under_command:
                add_shown(steps[-1].shown, line)
        else:
            steps.append(Step(block.line + offset, [line]))
            under_command = True
            opened = HEREDOC.search(line.split(" #", 1)[0])
            heredoc = opened.group(1) if opened else None
        if steps and heredoc is None:
            continued = steps[-1].command[-1].rstrip().endswith("\\")
    return steps


def python_shown(block: Block) -> list[str]:
    """What a Python block shows: its closing `# ` lines."""
    lines = block.text.rstrip("\n").splitlines()
    closing: list[str] = []
    while lines and lines[-1].startswith("# "):
        closing.insert(0, lines.pop())
    shown: list[str] = []
    for comment in closing:
        add_shown(shown, comment)
    return shown


def pattern(shown: list[str]) -> re.Pattern[str]:
    lines = ["..." if REMARK.match(line) else line for line in shown]
    parts = []
    for literal in "\n".join(lines).split("..."):
        pieces = re.split(r"\s+", literal)
        parts.append(r"\s*".join(re.escape(piece) for piece in pieces))
    return re.compile(".*".join(parts), re.S)


def compact(line: str) -> str:
    """A line of JSON as the pages show it: compact, escapes kept."""
    try:
        return json.dumps(json.loads(line), separators=(",", ":"))
    except ValueError:
        return line


def output_matches(shown: list[str], printed: str) -> bool:
    """Whether `printed` (blank lines and outer whitespace aside) is what `shown` shows."""
    text = "\n".join(compact(line.strip()) for line in printed.splitlines() if line.strip())
    return pattern(shown).fullmatch(text) is not None
