"""Ray started in a thread (gansweep/service/raystart.py): it must outlive the call that started it,
and a start that cannot finish must not hold the command hostage.

Each case runs in its own Python process: Ray's state is global to a process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

OUTLIVES_INIT = textwrap.dedent(
    """
    import time, ray
    from gansweep.service.raystart import RayStart
    start = RayStart.begin(None)
    start.wait()
    time.sleep(3)  # ray.init returned long ago: Ray's processes must still be there

    @ray.remote
    def square(x):
        return x * x

    print("result", ray.get(square.remote(7), timeout=60))
    start.stop(wait_for_start=True)
    print("initialized after stop", ray.is_initialized())
    """
)

UNREACHABLE = textwrap.dedent(
    """
    import time
    from gansweep.service.raystart import RayStart
    start = RayStart.begin("127.0.0.1:9")  # nothing listens there: ray.init keeps retrying
    time.sleep(2)
    start.stop()
    print("stop returned; start still under way:", start.thread.is_alive())
    """
)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )


def test_ray_started_in_a_thread_outlives_the_start_and_stops_cleanly() -> None:
    done = run_python(OUTLIVES_INIT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "result 49" in done.stdout
    assert "initialized after stop False" in done.stdout
    # the warning Ray gives when ray.init runs outside the main thread is ours to handle
    assert "SIGTERM handler is not set" not in done.stderr


def test_stop_does_not_wait_for_a_start_that_cannot_finish() -> None:
    done = run_python(UNREACHABLE)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stop returned; start still under way: True" in done.stdout
