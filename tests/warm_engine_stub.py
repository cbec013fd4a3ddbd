"""A stand-in for Prefect's engine in tests/test_warm_worker.py: what the warm process forks and runs.

argv: `exit N` prints where it runs and exits N; `sleep` writes its pid to $LORA_PIPELINE_STUB_PID_FILE and sleeps until
a signal (SIGTERM: writes "terminated" next to the pid file, exits 143).
"""

import json
import os
import signal
import sys
import time
from pathlib import Path


def _terminated(_signum: int, _frame: object) -> None:
    Path(os.environ["LORA_PIPELINE_STUB_PID_FILE"] + ".terminated").write_text("terminated")
    sys.exit(143)


command = sys.argv[1:]
report = {
    "pid": os.getpid(),
    "ppid": os.getppid(),
    "cwd": os.getcwd(),
    "argv": command,
    "marker": os.environ.get("LORA_PIPELINE_STUB_MARKER"),
}
print("STUB " + json.dumps(report), flush=True)
print("stub stderr line", file=sys.stderr, flush=True)
if command[:1] == ["exit"]:
    sys.exit(int(command[1]))
if command[:1] == ["sleep"]:
    signal.signal(signal.SIGTERM, _terminated)
    Path(os.environ["LORA_PIPELINE_STUB_PID_FILE"]).write_text(str(os.getpid()))
    time.sleep(120)
    sys.exit(0)
sys.exit(2)
