"""Run a model-written program and read what it prints, within bounds: the program check of the execution scorer.

Each program runs in its own Python process (`python -I -S`: isolated mode, no site packages, no user paths) in an
empty temporary folder with an empty environment, under these limits:
- CPU seconds (RLIMIT_CPU) and a wall-clock timeout that kills the whole process group;
- address space (RLIMIT_AS), so a program that builds a huge list fails with MemoryError instead of the machine;
- file size 0 (RLIMIT_FSIZE): no file can grow; an audit hook, installed before the program's first line and not
  removable by it, also refuses opening files for writing, sockets, subprocesses, `os.system`, fork/exec, `ctypes`,
  and imports outside a small allowlist of pure modules (math, fractions, decimal, statistics, itertools, ...);
- stdout read up to `max_output_bytes`; more ends the program.

This bounds what a small model's arithmetic program can do by mistake or by a hostile prompt; it is not a security
boundary against a determined attacker with a kernel exploit (run untrusted code from the internet in a container).
Each outcome is one word in `ProgramResult.status`, counted in the judge's report.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

ALLOWED_IMPORTS = ("math", "fractions", "decimal", "statistics", "itertools", "functools", "operator", "collections",
                   "numbers", "datetime", "string", "re", "random", "heapq", "bisect")

# Runs before the program in the child. Audit hooks cannot be removed once added (PEP 578), so the program cannot
# undo it. Modules already loaded (the allowlist's own dependencies, such as os) import without an event, but their
# harmful calls (os.system, os.remove, ...) raise audit events of their own, refused here.
_PRELUDE = r'''
import resource, sys
for _limit, _value in ((resource.RLIMIT_CPU, %(cpu)d), (resource.RLIMIT_AS, %(memory)d), (resource.RLIMIT_FSIZE, 0),
                       (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(_limit, (_value, _value))  # the child limits itself before the program's first line
for _name in %(allowed)r:
    __import__(_name)  # loaded before the hook: an allowed module's own imports (random imports os) raise no event
_ALLOWED = set(%(allowed)r)
def _guard(event, args):
    if event == "import":  # raised only for a module not loaded yet, so only for what the program itself asks
        if args[0].split(".")[0] not in _ALLOWED:
            raise ImportError("import of " + args[0] + " is not allowed here")
    elif event == "open":
        mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        if any(c in mode for c in "wax+") or flags & 0o3:
            raise PermissionError("writing files is not allowed here")
    elif event.split(".")[0] in ("socket", "subprocess", "ctypes", "winreg", "shutil") or event in (
            "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
            "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.link",
            "os.symlink", "os.utime", "os.putenv", "os.unsetenv", "resource.setrlimit", "resource.prlimit"):
        raise PermissionError(event + " is not allowed here")
sys.addaudithook(_guard)
del _guard, _name, _limit, _value, resource
'''


@dataclass
class ProgramResult:
    status: str  # ok | error | timeout | output_limit | refused | no_program
    stdout: str = ""
    error: str = ""

    @property
    def answer_text(self) -> str:
        return self.stdout.strip()


def run_program(code: str, timeout: float = 5.0, cpu_seconds: int = 4, memory_mb: int = 256,
                max_output_bytes: int = 4096) -> ProgramResult:
    """Run `code` under the limits above and return what it printed, or why it did not finish."""
    if not code.strip():
        return ProgramResult("no_program")
    source = _PRELUDE % {"allowed": ALLOWED_IMPORTS, "cpu": cpu_seconds, "memory": memory_mb * 2 ** 20} + "\n" + code
    with tempfile.TemporaryDirectory(prefix="selfalign-program-") as folder:
        try:
            # A new session (its own process group, so a timeout kills all of it); no preexec_fn, which is unsafe
            # beside threads (the scorer runs programs from a thread pool): the child sets its limits itself.
            process = subprocess.Popen([sys.executable, "-I", "-S", "-c", source], cwd=folder, env={},
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       start_new_session=True)
        except OSError as e:
            return ProgramResult("error", error=f"could not start: {e.strerror}")
        try:
            stdout, stderr = _read_bounded(process, timeout, max_output_bytes)
        finally:
            _kill_group(process)
    if stdout is None:
        return ProgramResult("timeout" if stderr is None else "output_limit")
    text = stdout.decode("utf-8", "replace")
    error = stderr.decode("utf-8", "replace").strip().splitlines()
    if process.returncode != 0:
        last = error[-1] if error else f"exit {process.returncode}"
        status = "refused" if re.search(r"(ImportError|PermissionError): .*not allowed here", last) else "error"
        if process.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            status = "timeout"
        return ProgramResult(status, stdout=text, error=last[-300:])
    return ProgramResult("ok", stdout=text)


def _read_bounded(process: subprocess.Popen, timeout: float, max_bytes: int):
    """(stdout, stderr) bytes; (None, None) on timeout, (None, b'') when stdout passed `max_bytes`."""
    import selectors
    import time

    deadline = time.monotonic() + timeout
    chunks = {process.stdout: bytearray(), process.stderr: bytearray()}
    with selectors.DefaultSelector() as selector:
        for stream in chunks:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return None, None
            for key, _ in selector.select(timeout=left):
                data = os.read(key.fileobj.fileno(), 65536)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                chunks[key.fileobj] += data
                if len(chunks[process.stdout]) > max_bytes or len(chunks[process.stderr]) > 65536:
                    return None, b""
    try:
        process.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None, None
    return bytes(chunks[process.stdout]), bytes(chunks[process.stderr])


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for stream in (process.stdout, process.stderr):
        stream.close()
    process.wait()


_FENCED = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def extract_program(text: str) -> str | None:
    """The program in a completion: its first fenced code block (```python ... ```), else None."""
    match = _FENCED.search(text)
    return match.group(1) if match and match.group(1).strip() else None
