"""Run the ``skimgfeat`` command line, and Python scripts, in real child processes without Python's start-up.

Every run of ``python -m skimgfeat`` spends seconds importing torch, torchvision, scikit-learn
and pandas before it reads its arguments; the test suite runs the command line about a hundred
times, and scripts that load a pickled model "in another process" a dozen more. So each test
process keeps a *launcher*: a Python process that imports those modules once and then, per
run, forks a child that executes ``python -m skimgfeat ARGS`` (or ``python -c CODE ARGS``)
exactly as the interpreter would, with the run's own arguments, environment, working folder,
stdin, stdout and stderr. The child is a real process: its own pid, exit code and signals
(tests SIGKILL it mid-run and resume), and nothing it does reaches the launcher or the test.
The launcher imports neither timm, OpenCLIP nor faiss: a script can still hide them.

What only a fresh interpreter can show (``--help`` not importing torch, ``import skimgfeat``
importing neither timm nor OpenCLIP, the console script, a progress bar on a terminal) is
still tested with ``subprocess`` directly.
"""

from __future__ import annotations

import json
import locale
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# The launcher: imports what every command imports, then forks one child per request line.
_LAUNCHER = r"""
import json, os, runpy, signal, sys

import skimgfeat.cli, skimgfeat.embedder, pyarrow.parquet  # noqa: F401  the seconds a run would spend

requests = os.fdopen(os.dup(0), "r")
replies = os.fdopen(os.dup(1), "w", buffering=1)
os.close(0)
os.close(1)
os.open(os.devnull, os.O_RDONLY)  # fd 0 again, until a child points it elsewhere
os.open(os.devnull, os.O_WRONLY)  # fd 1

def child(request):
    requests.close()
    replies.close()
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    for fd, (path, flags) in enumerate([(request["stdin"], os.O_RDONLY), (request["stdout"], os.O_WRONLY),
                                        (request["stderr"], os.O_WRONLY)]):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 0
    try:
        if "code" in request:  # python -c CODE ARGS
            sys.argv = ["-c", *request["args"]]
            exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__"})
        else:  # python -m skimgfeat ARGS
            sys.argv = ["skimgfeat", *request["args"]]
            runpy.run_module("skimgfeat", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, (int, type(None))):
            print(stop.code, file=sys.stderr)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        import atexit, threading
        threading._shutdown()  # what the interpreter does at exit: wait for non-daemon threads,
        atexit._run_exitfuncs()  # then run the exit handlers
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    os._exit(code)

for line in requests:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        child(request)
    replies.write(json.dumps({"pid": pid}) + "\n")
    _, status = os.waitpid(pid, 0)
    replies.write(json.dumps({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)}) + "\n")
"""


class _Launcher:
    """A launcher process: runs one child at a time."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", _LAUNCHER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)

    def start(self, request: dict) -> int:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self._reply())["pid"]

    def finished(self) -> int:
        """The exit code of the running child (negative: killed by that signal)."""
        return json.loads(self._reply())["returncode"]

    def _reply(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the CLI launcher died (exit code {self.process.wait()})")
        return line


class _Launchers:
    """The idle launchers of this test process; a run that finds none idle starts another."""

    def __init__(self) -> None:
        self._idle: list[_Launcher] = []
        self._lock = threading.Lock()

    def take(self) -> _Launcher:
        with self._lock:
            while self._idle:
                launcher = self._idle.pop()
                if launcher.process.poll() is None:
                    return launcher
        return _Launcher()

    def give_back(self, launcher: _Launcher) -> None:
        with self._lock:
            self._idle.append(launcher)


_launchers = _Launchers()


class ChildProcess:
    """A running child: the parts of :class:`subprocess.Popen` the tests use."""

    def __init__(self, args: list[str], env: dict | None, cwd: str | Path | None, input: str | None,
                 code: str | None = None) -> None:
        self.args = ["skimgfeat" if code is None else "python", *map(str, args)]
        self._folder = tempfile.TemporaryDirectory(prefix="skimgfeat-cli-")
        folder = Path(self._folder.name)
        stdin = folder / "stdin"
        stdin.write_text(input or "")
        self._out, self._err = folder / "stdout", folder / "stderr"
        self._out.touch()
        self._err.touch()
        request = {
            "args": self.args[1:], "env": dict(os.environ if env is None else env), "cwd": str(cwd or os.getcwd()),
            "stdin": str(stdin), "stdout": str(self._out), "stderr": str(self._err),
        }
        if code is not None:
            request["code"] = code
        self._launcher = _launchers.take()
        self.pid = self._launcher.start(request)
        self.returncode: int | None = None
        self._error: Exception | None = None
        self._waiter = threading.Thread(target=self._wait_for_exit, daemon=True)
        self._waiter.start()

    def _wait_for_exit(self) -> None:
        try:
            self.returncode = self._launcher.finished()
        except Exception as error:  # noqa: BLE001 - the launcher died: wait() says so
            self._error = error
            return
        _launchers.give_back(self._launcher)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._waiter.join(timeout)
        if self._waiter.is_alive():
            raise subprocess.TimeoutExpired(self.args, timeout)
        if self._error is not None:
            raise self._error
        return self.returncode

    def send_signal(self, number: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def output(self) -> tuple[str, str]:
        """What the child wrote to stdout and stderr, decoded as ``text=True`` would."""
        encoding = locale.getpreferredencoding(False)
        return self._out.read_text(encoding), self._err.read_text(encoding)

    def completed(self) -> subprocess.CompletedProcess:
        stdout, stderr = self.output()
        self._folder.cleanup()
        return subprocess.CompletedProcess(self.args, self.returncode, stdout, stderr)


def start_cli(*args, env: dict | None = None, cwd: str | Path | None = None, input: str | None = None) -> ChildProcess:
    """Start ``skimgfeat ARGS`` in a child process; ``env`` replaces the environment when given."""
    return ChildProcess(list(args), env, cwd, input)


def start_python(code: str, *args, env: dict | None = None, cwd: str | Path | None = None) -> ChildProcess:
    """Start ``python -c CODE ARGS`` in a child process; ``env`` replaces the environment when given."""
    return ChildProcess(list(args), env, cwd, None, code=code)


# Appended to a script by start_forked_python: its function run in processes forked from it.
_FORKED = r"""
import os as _os, sys as _sys, traceback as _traceback
_children = []
for _ in range({n}):
    _pid = _os.fork()
    if _pid == 0:
        try:
            print(*{function}(), flush=True)
            _os._exit(0)
        except BaseException:
            _traceback.print_exc()
            _os._exit(1)
    _children.append(_pid)
_sys.exit(max(_os.waitstatus_to_exitcode(_os.waitpid(_pid, 0)[1]) != 0 for _pid in _children))
"""


def start_forked_python(code: str, function: str, processes: int, *args, env: dict | None = None) -> ChildProcess:
    """Run ``code``, then its ``function`` in ``processes`` processes forked from it (the modules imported once:
    the launcher runs one child at a time, so separate children would each start a cold interpreter). Each
    process prints what the function returns on a line of its own; the exit code is 1 if any failed."""
    return start_python(code + _FORKED.format(n=int(processes), function=function), *args, env=env)


def run_cli(*args, env: dict | None = None, cwd: str | Path | None = None, input: str | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """``subprocess.run(["skimgfeat", *ARGS], capture_output=True, text=True)``, through the launcher."""
    return _completed(ChildProcess(list(args), env, cwd, input), timeout)


def run_python(code: str, *args, env: dict | None = None, cwd: str | Path | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """``subprocess.run([sys.executable, "-c", CODE, *ARGS], capture_output=True, text=True)``, through the launcher."""
    return _completed(ChildProcess(list(args), env, cwd, None, code=code), timeout)


def _completed(process: ChildProcess, timeout: float) -> subprocess.CompletedProcess:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    return process.completed()


def wait_until(condition, process: ChildProcess, timeout: float = 300) -> None:
    """Poll ``condition()`` until it holds; fail with the child's stderr if the child ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"finished before it could be stopped: {process.output()[1]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)
