"""Runs a README snippet as a new user would: the Python block that opens with a given line,
written to a file in a fresh directory and run with the broker in MQTT_RPC_URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mqtt_rpc.testing import MosquittoBroker

README = Path(__file__).resolve().parents[1] / "README.md"


def run_readme_snippet(opening: str, broker: MosquittoBroker, directory: Path) -> subprocess.CompletedProcess:
    """The README's ```python block whose code starts with `opening`, run; it must succeed."""
    readme = README.read_text()
    start = readme.index("```python\n" + opening)
    snippet = readme[start + len("```python\n") : readme.index("```", start + 10)]
    (directory / "snippet.py").write_text(snippet)
    environment = dict(os.environ, MQTT_RPC_URL=f"mqtt://{broker.host}:{broker.port}")
    result = subprocess.run(
        [sys.executable, "snippet.py"], cwd=directory, env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result
