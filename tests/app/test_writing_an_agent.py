"""docs/writing-an-agent.md shows the third agent's real code: every Python sample in it appears,
verbatim, in the file its first line names."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs/writing-an-agent.md"
SAMPLE = re.compile(r"```python\n# (?P<path>[\w/.]+\.py)\n(?P<code>.*?)```", re.DOTALL)


def test_every_sample_is_the_agents_real_code() -> None:
    samples = list(SAMPLE.finditer(GUIDE.read_text()))
    assert len(samples) >= 8
    for sample in samples:
        source = (ROOT / sample["path"]).read_text()
        assert sample["code"] in source, f"a sample of {sample['path']} is not in that file"


def test_the_guide_is_linked_from_the_readme() -> None:
    assert "docs/writing-an-agent.md" in (ROOT / "README.md").read_text()
