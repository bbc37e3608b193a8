"""Run one command and report its own peak RSS and wall time (started with python -I -S: a small parent).

    python -I -S bench/spawn.py REPORT_FILE CMD [ARGS...]

A child's peak RSS (ru_maxrss) starts from the size of the process it was forked from, so the
harness, which has psycopg loaded, does not fork the measured commands itself: this ~8 MiB
interpreter does, and reads the child's peak from getrusage(RUSAGE_CHILDREN) once it has ended.
"""

import json
import os
import resource
import sys
import time

report, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status = os.waitpid(pid, 0)
seconds = time.perf_counter() - started
code = os.waitstatus_to_exitcode(status)
with open(report, "w") as out:
    json.dump({"seconds": seconds, "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
               "exit": code}, out)
sys.exit(code if code >= 0 else 128 - code)
