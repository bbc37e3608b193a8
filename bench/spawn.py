"""Run one command and report its peak RSS and wall time (started with python -I -S: a small parent).

    python -I -S bench/spawn.py REPORT_FILE CMD [ARGS...]

A child's peak RSS (ru_maxrss) starts from the size of the process it was forked from, so the
harness, which has psycopg loaded, does not fork the measured commands itself: this ~8 MiB
interpreter does, and reads the child's peak from getrusage(RUSAGE_CHILDREN) once it has ended:
the largest single process of the command. A command of several processes (a shell pipe, a tool
that starts workers) is also sampled every 20 ms as a tree: the peak of the sum of its processes'
RSS (``tree_rss_kib``; shared pages counted in each process, as RSS does).
"""

import json
import os
import resource
import sys
import threading
import time

report, argv = sys.argv[1], sys.argv[2:]
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def tree_rss_kib(root: int) -> int:
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * PAGE_KIB
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    pending.extend(int(c) for c in children.read().split())
        except (OSError, ValueError):
            continue  # the process ended meanwhile
    return total


started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
peak = [0]
done = threading.Event()


def sample() -> None:
    while not done.wait(0.02):
        peak[0] = max(peak[0], tree_rss_kib(pid))


sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
_, status = os.waitpid(pid, 0)
seconds = time.perf_counter() - started
done.set()
code = os.waitstatus_to_exitcode(status)
maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(report, "w") as out:
    json.dump({"seconds": seconds, "maxrss_kib": maxrss, "tree_rss_kib": max(peak[0], maxrss), "exit": code}, out)
sys.exit(code if code >= 0 else 128 - code)
