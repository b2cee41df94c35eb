"""Exit codes of the command line, in real child processes: 2 for mistakes in the command, 1 for failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from _launcher import run_cli


def environment(env: dict | None = None) -> dict:
    """This process's environment without SKIMGFEAT_* variables, plus ``env``."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("SKIMGFEAT_")}
    return {**clean, **(env or {})}


def skimgfeat(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli(*args, env=environment(env), timeout=300)


def test_a_failure_of_the_run_exits_1_with_one_line_naming_the_cause(synthetic_photos, tmp_path):
    output = tmp_path / "out"
    (output / "image_features_raw.parquet").mkdir(parents=True)  # the final table cannot be written there
    result = skimgfeat("extract", synthetic_photos[0].parent, "-o", output, "--pattern", "*.jpg", "--weights", "none",
                       "-q")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("skimgfeat: error: IsADirectoryError")
    assert (output / ".skimgfeat-checkpoint").is_dir()  # what was embedded is kept for --resume


@pytest.mark.parametrize(
    "command",
    [
        ["extract", "{photos}", "-o", "{out}", "--pattern", "*.jpg", "--weights", "none"],
        ["quality", "{photos}", "-o", "{out}", "--pattern", "*.jpg"],
        ["similar", "item0_1.jpg", "--features", "{out}/no_table.parquet"],
        ["duplicates", "--features", "{out}/no_table.parquet"],
        ["cache", "{photos}"],
        ["sample-images", "{out}"],
        ["models"],
    ],
    ids=lambda command: command[0],
)
@pytest.mark.parametrize("value", ["many", "0"])
def test_a_bad_environment_variable_is_a_failure_under_every_command(command, value, synthetic_photos, tmp_path):
    arguments = [part.format(photos=synthetic_photos[0].parent, out=tmp_path) for part in command]
    result = skimgfeat(*arguments, "-q", env={"SKIMGFEAT_NUM_THREADS": value})
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"skimgfeat: error: ValueError: environment variable SKIMGFEAT_NUM_THREADS must be a positive integer, "
        f"got {value!r}\n"
    )
    assert not list(tmp_path.iterdir())  # refused before any work


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e400"])
def test_a_size_that_is_not_a_finite_number_of_bytes_is_a_usage_error(value, tmp_path):
    result = skimgfeat("cache", tmp_path, "--max-size", value)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"argument --max-size: expected a size such as 500M or 2G, got {value!r}" in result.stderr


@pytest.mark.parametrize("value", ["inf", "nan", "0"])
def test_a_number_of_days_must_be_finite_and_positive(value, tmp_path):
    result = skimgfeat("cache", tmp_path, "--older-than", value)
    assert result.returncode == 2
    assert f"argument --older-than: expected a positive number, got {value!r}" in result.stderr


def test_ctrl_c_suggests_resume_only_in_the_commands_that_have_it(tmp_path):
    # 3000 pairs of duplicates: far more CSV than a pipe holds, so `duplicates` is still
    # writing its results (inside the command, past start-up) until this test reads them.
    vectors = np.repeat(np.random.default_rng(0).normal(size=(3000, 4)), 2, axis=0)
    table = pd.DataFrame(vectors, columns=[f"img_feature_{j}" for j in range(4)])
    table.insert(0, "image_path", [f"a long folder name/item{i // 2:05d}_{i % 2 + 1}.webp" for i in range(6000)])
    table.to_csv(tmp_path / "features.csv", index=False)
    # Background processes may inherit an ignored SIGINT; the CLI must see the default one, as in a terminal.
    process = subprocess.Popen(
        [sys.executable, "-m", "skimgfeat", "duplicates", "--features", str(tmp_path / "features.csv"),
         "--no-copy-check"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout.read(1) == b"g"  # the CSV header has started: the command is running
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert stderr == b"skimgfeat: error: interrupted\n"
    for command, resumable in [("duplicates", False), ("similar", False), ("extract", True)]:
        help_text = skimgfeat(command, "--help").stdout
        assert ("130  interrupted (Ctrl-C): the work done so far is checkpointed, continue with --resume"
                in help_text) is resumable
        assert ("--resume" in help_text) is resumable


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--resume", "--restart"], "--resume and --restart exclude each other"),
        (["--device", "cuda:99"], "cuda:99"),
        (["--weights", "NO_SUCH_WEIGHTS"], "NO_SUCH_WEIGHTS"),
    ],
)
def test_a_mistake_in_the_command_exits_2(arguments, message, synthetic_photos, tmp_path):
    result = skimgfeat("extract", synthetic_photos[0].parent, "-o", tmp_path / "out", "--pattern", "*.jpg",
                       *arguments)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_an_unknown_option_exits_2():
    assert skimgfeat("extract", "--no-such-option").returncode == 2
    assert skimgfeat("sample-images", "out", "--photos-per-item", "9").returncode == 2


_IMPORTS_OF = textwrap.dedent(
    """
    import runpy, sys
    sys.argv = ["skimgfeat", *sys.argv[1:]]
    try:
        runpy.run_module("skimgfeat", run_name="__main__")
    except SystemExit as exit:
        code = exit.code
    print(code, "torch" in sys.modules, file=sys.stderr)
    """
)


@pytest.mark.parametrize("arguments", [["--version"], ["--help"], ["extract", "--help"]])
def test_version_and_help_do_not_import_torch(arguments):
    result = subprocess.run([sys.executable, "-c", _IMPORTS_OF, *arguments], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.stderr.split()[-2:] == ["0", "False"], result.stderr
    assert "skimgfeat" in result.stdout
