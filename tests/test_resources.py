"""Process resources from /proc: parsing on fixed files, and live figures that move when the process works."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from agent.service.resources import ProcessResources, ResourceError, format_duration, read_resources

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def fake_proc(tmp_path, comm: str, utime: int, stime: int, threads: int, start: int, resident: int):
    base = tmp_path / "proc" / "4242"
    base.mkdir(parents=True)
    # Fields 3..22 of /proc/PID/stat: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime priority nice num_threads itrealvalue starttime, then more.
    rest = ["S", "1", "4242", "4242", "0", "-1", "4194560", "900", "0", "3", "0", str(utime), str(stime), "7", "8",
            "20", "0", str(threads), "0", str(start), "123456789", "2000"]
    (base / "stat").write_text(f"4242 ({comm}) " + " ".join(rest) + "\n")
    (base / "statm").write_text(f"50000 {resident} 900 10 0 3000 0\n")
    return tmp_path / "proc"


def test_parses_fixed_proc_files_with_an_awkward_command_name(tmp_path):
    proc = fake_proc(tmp_path, "vehicle (agent)) x", utime=3 * TICKS, stime=TICKS // 2, threads=9,
                     start=100 * TICKS, resident=2560)
    found = read_resources(proc, "4242", boottime=lambda: 3700.0)
    assert found == ProcessResources(rss_bytes=2560 * PAGE, user_seconds=3.0, system_seconds=0.5, threads=9,
                                     process_uptime=3600.0, system_uptime=3700.0)
    assert found.cpu_seconds == 3.5 and found.cpu_share == pytest.approx(3.5 / 3600)
    mib = 2560 * PAGE / 1048576
    assert found.summary() == f"rss {mib:.1f} MiB, cpu 3.5 s (0.1% avg), up 1h 0m"


def test_broken_proc_files_give_a_resource_error_naming_the_file(tmp_path):
    proc = fake_proc(tmp_path, "agent", 1, 1, 1, 1, 1)
    (proc / "4242" / "stat").write_text("4242 (agent) S 1 2\n")
    with pytest.raises(ResourceError, match=r"proc/4242/stat: unexpected format"):
        read_resources(proc, "4242")
    with pytest.raises(ResourceError, match=r"cannot read .*proc/999/stat"):
        read_resources(proc, "999")


def test_live_figures_follow_memory_cpu_and_threads():
    before = read_resources()
    status_rss = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS:"))
    assert abs(before.rss_bytes - status_rss) < 8 * 1048576  # a second source agrees

    ballast = bytearray(64 * 1048576)
    for offset in range(0, len(ballast), PAGE):  # touch every page so it is resident
        ballast[offset] = 1
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    threads_before = read_resources().threads
    helper.start()
    try:
        after = read_resources()
    finally:
        stop.set()
        helper.join()
    times = os.times()
    assert after.rss_bytes - before.rss_bytes > 56 * 1048576
    assert after.cpu_seconds - before.cpu_seconds >= 0.25
    assert abs(after.cpu_seconds - (times.user + times.system)) < 0.1
    assert after.threads == threads_before + 1
    del ballast


def test_process_uptime_of_another_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(1.0)
        found = read_resources(pid=str(child.pid))
    finally:
        child.kill()
        child.wait()
    assert 0.9 <= found.process_uptime < 10
    assert found.system_uptime > found.process_uptime


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.9, "59s"), (61, "1m 1s"), (3600, "1h 0m"),
                                               (90061, "1d 1h")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
