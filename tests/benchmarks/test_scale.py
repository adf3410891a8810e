"""benchmarks/scale.py end to end on small corpora: the training process it measures is `python -m train`."""
import pytest
import json
import subprocess
import sys
from pathlib import Path

pytestmark = pytest.mark.slow  # torchrun, subprocesses or whole trainings: the second tier

ROOT = Path(__file__).resolve().parents[2]


def test_scale_builds_the_cache_then_trains_with_python_m_train_from_it(tmp_path):
    out = tmp_path / "scale.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--rows", "300,900", "--steps", "3",
                           "--work", str(tmp_path / "work"), "--keep", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    headline = json.loads(done.stdout.strip().splitlines()[-1])
    result = json.loads(out.read_text())
    assert headline["rows"] == [300, 900] and headline["ratio"] == round(result["train_peak_rss_ratio"], 3)
    for run in result["runs"]:
        n, train = run["rows"], run["train"]
        assert run["build"]["rows"] == n and train["steps"] == 3
        assert train["command"].startswith("python -m train --recipe reference")
        assert "--stop-after 3" in train["command"]
        assert train["peak_rss_mb"] > 0 and train["first_loss"] > 0
        # The run found the build child's cache (a hit): its own checkpoint is there, and no second
        # cache entry of the training split was written beside the build's.
        work = tmp_path / "work"
        assert (work / f"cache-{n}-run" / "checkpoint.pt").is_file()
        entries = [p for p in (work / f"cache-{n}").glob("*.safetensors") if not p.name.startswith("prefix-")]
        assert len(entries) == 2  # the training split (built by the build child) and the 1,000-row test split
