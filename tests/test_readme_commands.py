"""Every command in the README's shell blocks runs as written: each `latentcast` invocation parses
with the real CLI (flags, choices and types; nothing loads), each `make` target exists, each
benchmark module exists and takes the flags shown, each extra named in a pip install exists. A
command of another program must be on the list of those this project documents but does not own.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import build_parser

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
# Programs the README shows for the reader's machine or cluster, not this project's code.
OTHER_PROGRAMS = {"docker", "ray", "curl", "huggingface-cli", "sudo", "source"}


def readme_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
    return commands


def words_of(command: str) -> list[str]:
    words = shlex.split(command, comments=True)
    while words and ENV_ASSIGNMENT.match(words[0]):
        words.pop(0)
    return words


COMMANDS = readme_commands()


def test_the_readme_has_its_commands():
    assert len(COMMANDS) > 20
    assert "latentcast presets" in COMMANDS and "source .venv/bin/activate" in " ".join(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_readme_command_runs_as_written(command):
    words = words_of(command)
    program = words[0]
    if program in ("latentcast", ".venv/bin/latentcast"):
        subcommand = words[1]
        try:
            build_parser(subcommand).parse_args(words[1:])
        except SystemExit as exit_:
            pytest.fail(f"{command!r} does not parse (exit {exit_.code})")
    elif program == "make":
        targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M))
        named = [w for w in words[1:] if not ENV_ASSIGNMENT.match(w)]
        assert named and set(named) <= targets, (named, targets)
    elif program == ".venv/bin/python" and words[1] == "-m":
        module = ROOT / (words[2].replace(".", "/") + ".py")
        assert module.exists(), module
        source = module.read_text() + (ROOT / "benchmarks" / "common.py").read_text()  # shared flags live there
        for flag in (w.split("=")[0] for w in words[3:] if w.startswith("--")):
            assert f'"{flag}"' in source, f"{words[2]} takes no {flag}"
    elif program in ("pip", ".venv/bin/pip"):
        section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
        extras = re.findall(r"^([a-z]+) = \[", section, re.M)
        (target,) = [w for w in words if w.startswith(".[")]
        assert set(target[2:-1].split(",")) <= set(extras), target
    else:
        assert program in OTHER_PROGRAMS, f"{command!r}: a program this test does not know; check it and add it"


def test_the_cli_the_quick_start_shows_runs_and_make_run_prints_the_demo_url():
    presets = subprocess.run([str(Path(sys.executable).parent / "latentcast"), "presets"], capture_output=True, text=True, timeout=60)
    assert presets.returncode == 0 and "style" in presets.stdout
    dry_run = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "http://127.0.0.1:8000/" in dry_run.stdout, dry_run.stdout
