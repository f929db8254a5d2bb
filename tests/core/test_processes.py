"""The process manager with real child processes (Linux: checked through /proc)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from taskapp.core import processes
from taskapp.core.errors import ProcessError, ProcessTimeoutError
from taskapp.core.processes import describe_returncode, spawn
from taskapp.core.secrets import register_secret
from tests.core._process_helpers import (
    pid_alive,
    read_json_line,
    read_stat,
    start_script,
    stderr_of,
    still_running,
)
from tests.helpers import run_child, start_child, wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="checks children through Linux /proc"
)

PY = sys.executable


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


@pytest.fixture
def closing() -> object:
    """Collects spawned processes and closes them whatever the test did."""
    spawned: list[processes.ManagedProcess] = []
    yield spawned
    for proc in spawned:
        proc.close(grace=0.5)


# -- spawning ----------------------------------------------------------------------------


def test_spawn_runs_the_program_itself_in_its_own_group(closing: list) -> None:
    proc = spawn(py("import time; print('up', flush=True); time.sleep(30)"), name="sleeper")
    closing.append(proc)
    proc.wait_for_line("^up$", timeout=10)
    info = read_stat(proc.pid)
    assert info is not None
    # The exec wrapper exec'd: the pid is the program's, its parent is us, and it leads
    # its own session and process group.
    assert info.ppid == os.getpid()
    assert info.pgrp == proc.pid == info.session
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
    assert b"_exec_guard.py" not in b" ".join(cmdline)
    assert proc.alive
    assert proc.returncode is None
    assert proc in processes.live_processes()
    proc.close()
    assert not proc.alive
    assert proc.returncode == -signal.SIGTERM
    assert proc not in processes.live_processes()


def test_program_does_not_inherit_the_wrappers_ignored_signals(closing: list) -> None:
    proc = spawn(["sh", "-c", "echo up; exec sleep 30"])
    closing.append(proc)
    proc.wait_for_line("up", timeout=10)
    status = Path(f"/proc/{proc.pid}/status").read_text()
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn"))[7:], 16)
    # The wrapper is Python, which ignores SIGPIPE and SIGXFSZ; an exec keeps ignored
    # signals ignored, so the wrapper must restore them (sleep is not Python).
    assert not ignored & (1 << (signal.SIGPIPE - 1))
    assert not ignored & (1 << (signal.SIGXFSZ - 1))


def test_missing_program_is_a_process_error_with_file_not_found_cause() -> None:
    with pytest.raises(ProcessError, match="not found on PATH") as info:
        spawn(["taskapp-no-such-program-xyz"])
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(ProcessError, match="not found") as info:
        spawn(["./no/such/dir/prog"])
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_exec_failure_is_reported_from_the_wrapper(tmp_path: Path) -> None:
    script = tmp_path / "not-a-binary"
    script.write_bytes(b"\x00\x01\x02 not an executable format\n")
    script.chmod(0o755)
    before = set(processes._live)
    with pytest.raises(ProcessError, match="could not execute") as info:
        spawn([str(script)])
    assert isinstance(info.value.__cause__, OSError)
    assert set(processes._live) == before


def test_program_is_resolved_on_the_childs_path(tmp_path: Path, closing: list) -> None:
    tool = tmp_path / "mytool"
    tool.write_text("#!/bin/sh\necho tool-ran\n")
    tool.chmod(0o755)
    proc = spawn(["mytool"], extra_env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    closing.append(proc)
    proc.wait_for_line("tool-ran", timeout=10)
    assert proc.wait(10) == 0


def test_env_none_inherits_and_extra_env_overlays(closing: list) -> None:
    os.environ["TASKAPP_TEST_INHERITED"] = "inherited"
    try:
        proc = spawn(
            py("import os; print(os.environ['TASKAPP_TEST_INHERITED'], os.environ['EXTRA'])"),
            extra_env={"EXTRA": "extra"},
        )
        closing.append(proc)
        assert proc.wait_for_line("inherited extra", timeout=10)
        only = spawn(
            [PY, "-c", "import os; print(sorted(k for k in os.environ if k != 'LC_CTYPE'))"],
            env={"ONLY": "1"},
        )
        closing.append(only)
        assert only.wait_for_line(r"\['ONLY'\]", timeout=10)
    finally:
        del os.environ["TASKAPP_TEST_INHERITED"]


def test_pass_fds_are_inherited(closing: list) -> None:
    read_end, write_end = os.pipe()
    try:
        proc = spawn(
            py(f"import os; os.write({write_end}, b'via-fd'); os.close({write_end})"),
            pass_fds=[write_end],
        )
        closing.append(proc)
        os.close(write_end)
        write_end = -1
        assert os.read(read_end, 100) == b"via-fd"
        assert proc.wait(10) == 0
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_spawn_from_many_threads_at_once(closing: list) -> None:
    results: list[processes.ManagedProcess] = []
    errors: list[BaseException] = []

    def start(i: int) -> None:
        try:
            results.append(spawn([PY, "-c", f"print('n{i}')"], name=f"n{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    closing.extend(results)
    assert not errors
    assert len({p.pid for p in results}) == 6
    for proc in results:
        proc.wait_for_line(rf"^{proc.name}$", timeout=10)


def test_spawn_interrupted_while_waiting_for_the_spawner_leaves_no_child() -> None:
    spawner = processes._get_spawner()
    release = threading.Event()
    busy = spawner.submit(lambda: release.wait(10))  # the spawner thread is occupied
    before = set(processes._live)
    pipes_before = _open_pipes()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C while spawn() waits
            spawn(py("import time; time.sleep(30)"), name="interrupted")
    finally:
        timer.cancel()
        release.set()
        busy.result(5)
    spawner.run(lambda: None)  # everything queued before has run by now
    assert set(processes._live) == before, "the interrupted spawn still started a child"
    assert not _open_pipes() - pipes_before, "a pipe end leaked"


def _open_pipes() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("pipe:"):
            found.add(target)
    return found


# -- secrets -----------------------------------------------------------------------------


def test_secret_in_argv_is_refused_without_showing_it() -> None:
    secret = "sk-argv-secret-123456"
    with pytest.raises(ProcessError, match="contains a secret") as info:
        spawn(["echo", f"--token={secret}"], secrets=[secret])
    assert secret not in str(info.value)
    registered = "sk-registered-elsewhere-98765"
    register_secret(registered)
    with pytest.raises(ProcessError, match="environment"):
        spawn(["echo", registered])


def test_tail_lines_and_matches_redact_secrets(closing: list) -> None:
    secret = "tok-redact-me-424242"
    seen: list[str] = []
    proc = spawn(
        py("""
            import os, sys
            token = os.environ['MY_TOKEN']
            print('using token', token, flush=True)
            print('err side', token, file=sys.stderr, flush=True)
            print('done', flush=True)
        """),
        extra_env={"MY_TOKEN": secret},
        secrets=[secret],
        on_line=lambda stream, line: seen.append(f"{stream}:{line}"),
    )
    closing.append(proc)
    match = proc.wait_for_line(r"using token (\S+ \S+)", timeout=10)
    assert secret not in match.string
    assert match.group(1).startswith("[redacted sha256:")
    proc.wait(10)
    assert proc.output_drained(5)
    tail = proc.tail()
    assert "using token [redacted sha256:" in tail
    assert "err side [redacted sha256:" in tail
    assert secret not in tail
    assert all(secret not in line for line in proc.lines())
    assert proc.lines("stderr") == [line for line in proc.lines() if line.startswith("err side")]
    assert seen and all(secret not in line for line in seen)
    assert any(line.startswith("stderr:err side") for line in seen)


# -- wait_for_line -----------------------------------------------------------------------


def test_wait_for_line_finds_past_and_future_lines(closing: list) -> None:
    proc = spawn(
        py("""
            import sys, time
            print('early line', flush=True)
            time.sleep(0.3)
            print('URL https://example-123.test', file=sys.stderr, flush=True)
            time.sleep(30)
        """)
    )
    closing.append(proc)
    proc.wait_for_line("early", timeout=10)
    match = proc.wait_for_line(r"https://(\S+)", timeout=10, stream="stderr")
    assert match.group(1) == "example-123.test"
    # Already printed: found again from the buffer when since_start...
    assert proc.wait_for_line("early line", timeout=1)
    # ...but not when only new lines count, nor on the other stream.
    with pytest.raises(ProcessTimeoutError):
        proc.wait_for_line("early line", timeout=0.3, since_start=False)
    with pytest.raises(ProcessTimeoutError):
        proc.wait_for_line("https://", timeout=0.2, stream="stdout")


def test_wait_for_line_timeout_carries_the_tail(closing: list) -> None:
    proc = spawn(py("import time; print('still booting', flush=True); time.sleep(30)"))
    closing.append(proc)
    started = time.monotonic()
    with pytest.raises(ProcessTimeoutError) as info:
        proc.wait_for_line("never printed", timeout=0.5)
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 3
    assert "still booting" in (info.value.log_tail or "")
    assert "never printed" in str(info.value)
    assert proc.alive


def test_wait_for_line_fails_at_once_when_the_child_exits_first(closing: list) -> None:
    proc = spawn(
        py("""
            import sys
            print('about to fail', flush=True)
            print('Traceback: boom', file=sys.stderr)
            sys.exit(7)
        """)
    )
    closing.append(proc)
    started = time.monotonic()
    with pytest.raises(ProcessError) as info:
        proc.wait_for_line("ready", timeout=30)
    assert not isinstance(info.value, ProcessTimeoutError)
    assert time.monotonic() - started < 5
    assert "exit code 7" in str(info.value)
    assert "Traceback: boom" in (info.value.log_tail or "")
    assert "about to fail" in (info.value.log_tail or "")


def test_last_line_printed_before_exit_is_still_found(closing: list) -> None:
    proc = spawn(py("print('final answer 42')"))
    closing.append(proc)
    proc.wait(10)
    assert proc.wait_for_line(r"answer (\d+)", timeout=5).group(1) == "42"


def test_wait_exit_returns_on_exit_or_on_stop(closing: list) -> None:
    proc = spawn(py("import time; time.sleep(0.3)"))
    closing.append(proc)
    stop = threading.Event()
    assert proc.wait_exit(stop) == 0
    long = spawn(py("import time; time.sleep(30)"))
    closing.append(long)
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert long.wait_exit(stop) is None
    assert time.monotonic() - started < 2
    assert long.alive


# -- output volume -----------------------------------------------------------------------


def test_ten_megabytes_on_stdout_and_stderr_do_not_stall(closing: list) -> None:
    code = """
        import sys, threading
        line = 'x' * 99 + '\\n'
        def spew(stream):
            for _ in range(100_000):   # 10 MB
                stream.write(line)
            stream.flush()
        t = threading.Thread(target=spew, args=(sys.stderr,))
        t.start()
        spew(sys.stdout)
        t.join()
        print('all written', flush=True)
        huge = 'y' * 200_000           # one 200 kB line: truncated, not kept whole
        print(huge, flush=True)
        print('end', flush=True)
    """
    started = time.monotonic()
    proc = spawn(py(code), buffer_lines=2000)
    closing.append(proc)
    assert proc.wait(30) == 0, "the child stalled on a full pipe"
    assert proc.output_drained(10)
    elapsed = time.monotonic() - started
    assert len(proc.lines()) == 2000  # bounded
    # Per stream: the two reader threads append as they read, so the stderr reader may
    # still add lines it had buffered after stdout's "end" (at most a 64 kB pipe's worth,
    # well under 2000 lines); across streams the order is arrival order.
    stdout = proc.lines("stdout")
    assert stdout[-1] == "end"
    long_line = stdout[-2]
    assert long_line.startswith("y" * 100)
    assert len(long_line) < processes.MAX_LINE + 100
    assert "more bytes" in long_line
    assert elapsed < 30


# -- close -------------------------------------------------------------------------------


def test_child_ignoring_sigterm_is_killed_after_the_grace_period(closing: list) -> None:
    proc = spawn(
        py("""
            import signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print('ignoring', flush=True)
            time.sleep(60)
        """)
    )
    closing.append(proc)
    proc.wait_for_line("ignoring", timeout=10)
    started = time.monotonic()
    proc.close(grace=0.5)
    elapsed = time.monotonic() - started
    assert proc.returncode == -signal.SIGKILL
    assert describe_returncode(proc.returncode) == "killed by SIGKILL"
    assert 0.5 <= elapsed < 3
    assert not pid_alive(proc.pid)


def test_close_kills_the_whole_group_and_is_idempotent(closing: list) -> None:
    proc = spawn(
        py("""
            import subprocess, sys, time
            child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
            print('grandchild', child.pid, flush=True)
            time.sleep(60)
        """)
    )
    closing.append(proc)
    grandchild = int(proc.wait_for_line(r"grandchild (\d+)", timeout=10).group(1))
    assert pid_alive(grandchild)
    proc.close(grace=2)
    proc.close()
    proc.close(grace=0)
    assert wait_until(lambda: not pid_alive(grandchild), 2)
    assert proc.closed


def test_group_members_outliving_the_child_are_swept(closing: list) -> None:
    proc = spawn(
        py("""
            import subprocess, sys
            child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
            print('grandchild', child.pid, flush=True)
        """)
    )
    closing.append(proc)
    grandchild = int(proc.wait_for_line(r"grandchild (\d+)", timeout=10).group(1))
    assert proc.wait(10) == 0
    assert pid_alive(grandchild)  # the leader left; a group member remains
    proc.close()
    assert wait_until(lambda: not pid_alive(grandchild), 2)


def test_close_all_shares_one_grace_period() -> None:
    stubborn = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('ignoring', flush=True)
        time.sleep(60)
    """
    procs = [spawn(py(stubborn)) for _ in range(3)]
    for proc in procs:
        proc.wait_for_line("ignoring", timeout=10)
    assert set(procs) <= set(processes.live_processes())
    started = time.monotonic()
    processes.close_all(grace=1.0)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 2.5  # not 3 x 1 s
    assert all(not p.alive and p.closed for p in procs)
    assert all(p.returncode == -signal.SIGKILL for p in procs)


# -- no orphans: the parent is SIGKILLed -------------------------------------------------

PARENT_SCRIPT = """
import json, sys, threading, time
from taskapp.core.processes import spawn

mode = sys.argv[1] if len(sys.argv) > 1 else "main"
guard = "pipe" if mode == "pipe" else "auto"
holder = {}

def start():
    holder["proc"] = spawn(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(120)"],
        name="victim", guard=guard,
    )

if mode == "worker":
    worker = threading.Thread(target=start)
    worker.start()
    worker.join()            # the thread that asked for the spawn is gone now
else:
    start()
proc = holder["proc"]
proc.wait_for_line("up", timeout=20)
print(json.dumps({"pid": proc.pid}), flush=True)
time.sleep(120)
"""


def _run_parent(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], int, Path]:
    script = tmp_path / f"parent_{mode}.py"
    script.write_text(PARENT_SCRIPT)
    err = script.with_suffix(".stderr")
    parent = start_child(
        [PY, str(script), mode], stdout=subprocess.PIPE, stderr=err.open("w"), text=True
    )
    info = read_json_line(parent, 30, script)
    pid = info["pid"]
    assert isinstance(pid, int)
    return parent, pid, script


@pytest.mark.parametrize("mode", ["main", "worker", "pipe"])
def test_child_dies_with_a_sigkilled_parent(tmp_path: Path, mode: str) -> None:
    parent, child, script = _run_parent(tmp_path, mode)
    try:
        info = read_stat(child)
        assert info is not None
        assert info.ppid == parent.pid
        # Spawned from a thread that has exited (mode "worker"): still alive while the
        # parent lives, because the fork happened on the long-lived spawner thread.
        time.sleep(0.5)
        assert pid_alive(child), stderr_of(script)
        parent.kill()
        parent.wait(10)
        started = time.monotonic()
        assert wait_until(lambda: not still_running([info], {info.session}), 2.0), (
            f"child {child} ({mode}) outlived its SIGKILLed parent"
        )
        assert time.monotonic() - started < 2.0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if pid_alive(child):
            os.killpg(child, signal.SIGKILL)


def test_atexit_closes_children_left_running(tmp_path: Path) -> None:
    script = tmp_path / "leaves_child.py"
    parent = start_script(
        script,
        textwrap.dedent("""
            import json, sys
            from taskapp.core.processes import spawn
            proc = spawn([sys.executable, "-c", "import time; time.sleep(120)"], name="left")
            print(json.dumps({"pid": proc.pid}), flush=True)
            import time
            time.sleep(120)  # SIGINT -> KeyboardInterrupt -> normal exit, without close()
        """),
    )
    try:
        child = read_json_line(parent, 30, script)["pid"]
        assert isinstance(child, int)
        assert pid_alive(child)
        os.kill(parent.pid, signal.SIGINT)  # KeyboardInterrupt -> normal interpreter exit
        parent.wait(15)
        assert not pid_alive(child)
        assert "left running at exit" in stderr_of(script)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_wrapper_refuses_to_run_when_its_parent_is_not_the_expected_one(tmp_path: Path) -> None:
    # The race the wrapper closes: the parent died between fork and prctl, so the wrapper
    # now has another parent. It must not exec the program.
    marker = tmp_path / "ran"
    read_end, write_end = os.pipe()
    try:
        result = run_child(
            [
                PY,
                "-I",
                "-S",
                processes._GUARD_SCRIPT,
                "pdeathsig",
                "1",  # "expected" parent: not us
                str(int(signal.SIGTERM)),
                str(write_end),
                "-1",
                "/usr/bin/touch",
                "--",
                "touch",
                str(marker),
            ],
            pass_fds=[write_end],
            timeout=20,
            check=False,
        )
    finally:
        os.close(read_end)
        os.close(write_end)
    assert result.returncode == -signal.SIGTERM
    assert not marker.exists()
