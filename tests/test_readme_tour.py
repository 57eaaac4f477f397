"""The README's CLI tour, run verbatim and in order in an empty directory, so it cannot drift
from the code. Only the cost is cut: every `--epochs N` becomes 1 (2 where the line resumes a run
to extend it), `--finetune-epochs` 1, `kompakt compress` fits on 64 samples' activations,
`kompakt optimize` searches MetaHead and half-pruning in one round, and bench measures for a
fraction of a second."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
KOMPAKT = f"{sys.executable} -m kompakt.cli"


FLOOR = re.compile(r"test >= (\d+(?:\.\d+)?) %")
# what other libraries print: the logging module's default format, Python's warning format,
# ONNX Runtime's C++ logger
FOREIGN = re.compile(
    r"^(WARNING|INFO|ERROR|DEBUG|CRITICAL):|^\S+\.py:\d+: \w*Warning:|\[[WE]:onnxruntime"
)
PREDICTION = re.compile(r"^\S*?(\d{4})_(\S+)\.png: (\S+) \(", re.MULTILINE)


def tour_commands() -> list[str]:
    """The `$ ...` lines of the CLI tour's console block, continuation lines joined, comments
    dropped."""
    return [command for command, _ in tour_lines()]


def tour_lines() -> list[tuple[str, str]]:
    """(command, its comments) for each `$ ...` line of the CLI tour."""
    text = README.read_text()
    start = text.index("```console", text.index("## CLI tour")) + len("```console")
    block = text[start : text.index("\n```", start)]
    commands, current, comments = [], "", ""
    for line in block.splitlines():
        if line.startswith("$ "):
            current, comments = line[2:], ""
        elif current and line.startswith(" "):
            current += " " + line.strip()
        else:
            continue
        code, _, comment = current.partition(" #")
        if code.rstrip().endswith("\\"):
            current = code.rstrip()[:-1]
            comments += comment
            continue
        commands.append((code.strip(), (comments + " " + comment).strip()))
        current = ""
    return commands


def cheap(command: str, keep_epochs: bool = False) -> str:
    """The same command with its cost cut (epochs unless `keep_epochs`, bench time);
    everything else verbatim."""
    epochs = "2" if "--resume" in command else "1"
    if not keep_epochs:
        command = re.sub(r"--epochs \d+", f"--epochs {epochs}", command)
        command = re.sub(r"--finetune-epochs \d+", "--finetune-epochs 1", command)
        if command.startswith("kompakt train") and not re.search(r"--batch-size|--prune", command):
            # one epoch at the default (smaller) batch costs 4x the steps; 64 learns enough
            # (not while pruning during training: its schedule needs the steps to recover)
            command += " --batch-size 64"
    if command.startswith("kompakt compress"):
        command += " --calib-samples 64"  # the output fit on fewer activations
    if command.startswith("kompakt optimize"):  # a smaller search, one round
        command += " --methods meta,prune --prune-ratios 0.5 --rounds 1 --calib-samples 64"
    if command.startswith("kompakt bench") and "--compare" not in command:
        command += " --warmup-s 0.05 --duration-s 0.2 --min-runs 5 --rounds 1 --quiet"
        if "--scenario server" in command:
            command += " --search-steps 2"
    command = command.replace(" examples/", f" {README.parent / 'examples'}/")
    return re.sub(r"(^|; )kompakt ", lambda m: f"{m.group(1)}{KOMPAKT} ", command)


def test_the_tour_has_every_command_the_readme_promises():
    commands = tour_commands()
    assert len(commands) >= 20
    verbs = {c.split()[1] for c in commands}
    for verb in (
        "train",
        "prune",
        "search",
        "inspect",
        "export",
        "lint-trt",
        "deploy",
        "verify",
        "predict",
        "bench",
        "data",
        "list",
        "compress",
        "optimize",
    ):
        assert verb in verbs, verb


def test_floors_are_stated_on_the_training_lines():
    floors = {
        c.split("--out ")[-1].split()[0]: FLOOR.search(m) for c, m in tour_lines() if "--out" in c
    }
    assert floors["runs/ddp"] and floors["runs/dense"], floors


def check_quality(command: str, comments: str, stdout: str) -> None:
    """What the README says the line gives: its stated test-accuracy floor (`# test >= N %`),
    else (epochs cut) at least that it learned (>= 50 %); predict: the right digit for most
    sample images (the files are named INDEX_LABEL.png)."""
    accuracy = re.search(r"^done: .*accuracy=([\d.]+)", stdout, re.MULTILINE)
    floor = FLOOR.search(comments)
    if accuracy:
        want = float(floor.group(1)) if floor else 50.0
        assert 100 * float(accuracy.group(1)) >= want, f"$ {command}\n{stdout[-1500:]}"
    if command.startswith("kompakt predict"):
        rows = PREDICTION.findall(stdout)
        right = sum(label == predicted for _, label, predicted in rows)
        assert rows and right >= 0.75 * len(rows), f"$ {command}\n{stdout}"


@pytest.mark.slow
def test_the_readme_tour_runs_verbatim_in_order(tmp_path):
    for command, comments in tour_lines():
        floor = FLOOR.search(comments) is not None  # stated numbers are checked at full length
        proc = subprocess.run(
            cheap(command, keep_epochs=floor),
            shell=True,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, f"$ {command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr, f"$ {command}\n{proc.stderr[-2000:]}"
        check_quality(command, comments, proc.stdout)
        foreign = [line for line in proc.stderr.splitlines() if FOREIGN.search(line)]
        assert not foreign, f"$ {command}: lines from other libraries\n" + "\n".join(foreign[:5])
    assert (tmp_path / "runs" / "report" / "report.md").is_file()
    assert (tmp_path / "runs" / "server" / "server_qps_p99.png").is_file()
    assert (tmp_path / "runs" / "optimized" / "optimize.md").is_file()
