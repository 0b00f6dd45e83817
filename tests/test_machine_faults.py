"""Faults of the machine on a real disk (issue 12): a run that fills its disk mid-way, and a read-only outputs
folder. The outputs folder is a small tmpfs mounted in a private mount namespace (``unshare --mount``), so the
disk really is full and really is read-only; the fault plugin fills it at an epoch's end, through the plugin
system like every other fault. Everything runs in one shell inside the namespace (the tmpfs vanishes with it),
which copies what the test checks out to ``tmp_path``."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from test_train import outputs, project  # noqa: F401  (fixture)

FAULTS = Path(__file__).parent / "plugins_faults"


def test_full_disk_mid_run_fails_in_one_line_and_resumes_after_space_is_freed(project, tmp_path):  # noqa: F811
    config = project("full", tasks=1, epochs=2)
    readonly = project("ro", tasks=1, epochs=1)
    out = tmp_path / "disk"
    out.mkdir()
    report = tmp_path / "report"
    report.mkdir()
    lorakit = f"{shlex.quote(sys.executable)} -m lorakit"
    script = f"""
set -u
cd {shlex.quote(str(report))}
mount -t tmpfs -o size=8m tmpfs {out}
LORAKIT_FAULT_FILL_DISK=1 LORAKIT_FAULT_FILL_PATH={out}/filler \\
    {lorakit} train {config} --outputs {out} >train.out 2>train.err; echo $? >train.rc
cp {out}/full/run.json failed-run.json
ls {out}/full/checkpoints >checkpoints.txt
rm {out}/filler
{lorakit} train {config} --outputs {out} --resume >resume.out 2>resume.err; echo $? >resume.rc
cp {out}/full/run.json resumed-run.json
mount -o remount,ro {out}
{lorakit} train {readonly} --outputs {out} >ro.out 2>ro.err; echo $? >ro.rc
umount {out}
"""
    path = os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "LORAKIT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr

    def text(name: str) -> str:
        return (report / name).read_text(encoding="utf-8")

    # the first run: one line naming the folder and the fault, exit 2, recorded failed with that reason
    errors = [line for line in text("train.err").splitlines() if line.startswith("Error")]
    assert text("train.rc").strip() == "2", text("train.err")
    assert len(errors) == 1 and errors[0].startswith("Error: full failed: "), errors
    assert f"{out}" in errors[0] and "disk full (No space left on device)" in errors[0]
    assert "Traceback" not in text("train.err")
    failed = json.loads(text("failed-run.json"))
    assert failed["status"] == "failed" and "disk full" in failed["error"], failed
    assert not any(
        name.startswith(".tmp") for name in text("checkpoints.txt").split()
    )  # nothing half-written
    # space freed: the run resumes from its intact checkpoint and completes
    assert text("resume.rc").strip() == "0", text("resume.err")
    assert json.loads(text("resumed-run.json"))["status"] == "completed"
    # a read-only outputs folder: one line naming the path, exit 2
    ro = [line for line in text("ro.err").splitlines() if line.strip()]
    assert text("ro.rc").strip() == "2", text("ro.err")
    assert len(ro) == 1 and ro[0].startswith(f"Error: {out}") and "read-only file system" in ro[0], ro
