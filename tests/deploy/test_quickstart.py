"""The quick start as a user runs it: `scripts/run.sh` with the mock cloud,
the exact snippets its banner prints, then Ctrl-C, after which nothing it
started is left running. Ctrl-C in a terminal signals the whole process
group; a supervisor may signal the script alone, which must then stop what
it started itself."""

import json
import os
import pathlib
import queue
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PORTS = (8080, 8081, 9000)  # gateway, edge worker, mock cloud: run.sh's own


def _port_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _session_pids(sid):
    """Live (not zombie) processes of a session."""
    pids = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        # state is field 3, session field 6 (indices 0 and 3 after the name)
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _what_is_left(sid):
    """The session's processes still running, and the end of each log the
    quick start writes: what a shutdown that hangs was doing."""
    lines = []
    for pid in _session_pids(sid):
        try:
            cmd = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            state = pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()[2]
        except OSError:
            continue
        lines.append(f"{pid} {state} {cmd.decode(errors='replace')[:200]}")
    for log in sorted((ROOT / ".cache").glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-15:]
        lines.append(f"--- {log.name}\n" + "\n".join(tail))
    return "\n".join(lines)


@pytest.mark.parametrize("interrupt", ["process_group", "script_alone"])
def test_quickstart_snippets_work_and_ctrl_c_stops_everything(interrupt):
    busy = [p for p in PORTS if not _port_free(p)]
    assert not busy, f"ports {busy} are taken; the quick start needs them"

    proc = subprocess.Popen(
        # SIGINT at its default, as in a terminal: a shell that starts with
        # it ignored (anything run in the background of a non-interactive
        # shell does) cannot trap it, and Ctrl-C would do nothing.
        ["env", "--default-signal=INT", "bash", str(ROOT / "scripts" / "run.sh")],
        cwd=ROOT,
        env=dict(os.environ, MOCK_CLOUD="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Its own session and process group, like a terminal's foreground
        # job: Ctrl-C is SIGINT to the whole group.
        start_new_session=True,
    )
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()
    try:
        banner = []
        deadline = time.monotonic() + 900  # a first build may run here
        while not banner or "Ctrl-C stops everything." not in banner[-1]:
            assert proc.poll() is None, "run.sh exited:\n" + "".join(banner)
            try:
                banner.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError("no banner within 15 min:\n" + "".join(banner)) from None
        text = "".join(banner)
        assert "Ready." in text, text

        python = re.search(r"^\s*(\S+/\.venv/bin/python -c '.*?')$", text, re.S | re.M)
        curl = re.search(r"^\s*(curl .*?\]\}')$", text, re.S | re.M)
        assert python and curl, text

        out = subprocess.run(
            ["bash", "-c", python.group(1)], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        head, content = out.stdout.split("\n", 1)
        backend, reason = head.split()
        assert backend and reason and content.strip(), out.stdout

        out = subprocess.run(
            ["bash", "-c", curl.group(1)], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["choices"][0]["message"]["content"], answer

        started = _session_pids(proc.pid)
        assert len(started) >= 4, started  # run.sh, edge worker, mock cloud, gateway
    finally:
        if proc.poll() is None:
            if interrupt == "process_group":
                os.killpg(proc.pid, signal.SIGINT)
            else:
                os.kill(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        stuck = _what_is_left(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"run.sh still running 60 s after Ctrl-C\n{stuck}") from None
    deadline = time.monotonic() + 10
    while _session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _session_pids(proc.pid)
    for pid in left:  # so that a failure here does not hold the ports
        os.kill(pid, signal.SIGKILL)
    assert not left, f"left running after Ctrl-C: {left}"
    assert all(_port_free(p) for p in PORTS)
