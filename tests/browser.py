"""Headless Chromium (Debian's `chromium` package) on a page: its text after the scripts ran,
and a screenshot. For the tests of the web UIs gansweep's users open (MLflow's, Optuna's
dashboard); the same as tests/reporting/test_report.py's, without that module's imports."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path


def page_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


def chromium(url: str, screenshot: Path, profile: Path, virtual_ms: int = 15_000) -> str:
    """The page's text after its scripts ran (`virtual_ms` of virtual time), and a 1400x900
    screenshot."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "headless Chromium is needed: apt-get install -y chromium"
    process = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--screenshot={screenshot}", "--window-size=1400,900",
         f"--virtual-time-budget={virtual_ms}", "--dump-dom", url],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    try:
        dom, _ = process.communicate(timeout=120)
    finally:
        try:  # Chromium's own helper processes, by the process group it leads
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    assert process.returncode == 0, f"chromium exited {process.returncode} on {url}"
    return page_text(dom)
