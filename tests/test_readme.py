"""The READMEs cannot drift from the CLI: every `python -m …` (and `torchrun … -m …`) in the shell blocks of the
first page and of every page it sends readers to parses with the same flags, by the entry point's own parser."""
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shell_commands(text: str) -> list[str]:
    """Each command of each ```bash block, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.extend(part.strip() for part in line.split("&&") for part in part.split("|"))
    return commands


def module_calls(text: str) -> list[tuple[str, list[str]]]:
    """(module, argv) for every python -m / torchrun -m call; shell variables become a placeholder."""
    calls = []
    for command in shell_commands(text):
        try:
            words = shlex.split(re.sub(r'"?\$\(?[A-Za-z_][^ ]*', "PLACEHOLDER", command))
        except ValueError:  # a line of a multi-line string, such as python -c "..."
            assert not re.search(r"-m (train|benchmarks)", command), f"cannot read README command: {command}"
            continue
        if "-m" in words and words[0] in ("python", "python3", "torchrun"):
            i = words.index("-m")
            if words[i + 1].split(".")[0] in ("train", "benchmarks"):
                calls.append((words[i + 1], words[i + 2:]))
    return calls


PAGES = ["README.md", "benchmarks/README.md", "sweeps/README.md", "docs/distributed.md", "docs/recipes.md"]
README_CALLS = [(page, *call) for page in PAGES for call in module_calls((ROOT / page).read_text())]


def test_the_readmes_have_commands_to_check():
    assert {"train", "train.evaluate", "train.predict", "train.export"} <= {m for p, m, _ in README_CALLS
                                                                            if p == "README.md"}
    assert {"train.sweep"} <= {m for p, m, _ in README_CALLS if p == "sweeps/README.md"}
    assert {"benchmarks.accuracy", "benchmarks.speed"} <= {m for p, m, _ in README_CALLS}


def test_the_first_page_stays_a_first_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 170


@pytest.mark.parametrize("page, module, argv", README_CALLS,
                         ids=[f"{p}: " + " ".join([m, *a])[:60] for p, m, a in README_CALLS])
def test_every_readme_command_parses(page, module, argv):
    entry = importlib.import_module(module if module.count(".") else module + ".__main__")
    if hasattr(entry, "parser"):
        entry.parser().parse_args(argv)  # SystemExit(2) on an unknown flag or a bad value
    elif hasattr(entry, "parse"):  # the race's: its own flags, and what follows -- passed on
        entry.parse(argv)
    else:  # parsers built inside main(): argparse checks every flag before it acts on --help
        own = argv[:argv.index("--")] if "--" in argv else argv  # what follows -- is passed on, not parsed here
        done = subprocess.run([sys.executable, "-m", module, *own, "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr


def test_the_extractor_sees_continuations_and_variables():
    text = '```bash\nX=$(python -c "print(1)")\npython -m train --model "$X" \\\n    --epochs 3  # note\n```\n'
    assert module_calls(text) == [("train", ["--model", "PLACEHOLDER", "--epochs", "3"])]
