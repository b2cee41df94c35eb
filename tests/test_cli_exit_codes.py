"""Exit codes of the command line, in real subprocesses: 2 for mistakes in the command, 1 for failures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


def skimgfeat(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SKIMGFEAT_")}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "skimgfeat", *map(str, args)], capture_output=True, text=True,
                          env=environment, timeout=300, check=False)


def test_a_failure_of_the_run_exits_1_with_one_line_naming_the_cause(synthetic_photos, tmp_path):
    output = tmp_path / "out"
    (output / "image_features_raw.parquet").mkdir(parents=True)  # the final table cannot be written there
    result = skimgfeat("extract", synthetic_photos[0].parent, "-o", output, "--pattern", "*.jpg", "--weights", "none",
                       "-q")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("skimgfeat: error: IsADirectoryError")
    assert (output / ".skimgfeat-checkpoint").is_dir()  # what was embedded is kept for --resume


def test_a_bad_environment_variable_is_a_failure_not_a_usage_error(synthetic_photos, tmp_path):
    result = skimgfeat("extract", synthetic_photos[0].parent, "-o", tmp_path / "out", "--pattern", "*.jpg",
                       "--weights", "none", "-q", env={"SKIMGFEAT_NUM_THREADS": "many"})
    assert result.returncode == 1
    last_line = result.stderr.splitlines()[-1]
    assert last_line.startswith("skimgfeat: error: ")
    assert "SKIMGFEAT_NUM_THREADS must be a positive integer, got 'many'" in last_line


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
