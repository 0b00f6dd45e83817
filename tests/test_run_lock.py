"""One run per experiment folder: a second run of the same exp_id exits 2 naming the holder; a lock left by a
dead process is taken over."""

from __future__ import annotations

import signal
import subprocess
import time

from test_precision import TRAIN, faults_env
from test_train import outputs, project  # noqa: F401  (fixture)


def test_one_run_per_experiment_folder_and_a_dead_holder_s_lock_is_taken_over(project):  # noqa: F811
    out = outputs(project)
    config = project("locked", tasks=1, epochs=1)
    marker = project.root / "locked.marker"
    args = [*TRAIN, str(config), "--outputs", str(out), "--set", 'model.backbone="slow_bert"']
    first = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=faults_env(LORAKIT_FAULT_LOADING=str(marker), LORAKIT_FAULT_LOAD_SECONDS="60"),
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    second = subprocess.run([*args, "--force"], capture_output=True, text=True, env=faults_env())
    assert second.returncode == 2, second.stderr
    (line,) = second.stderr.strip().splitlines()
    assert f"process {first.pid} is training this experiment" in line
    first.send_signal(signal.SIGKILL)  # the holder dies without a word: the kernel drops its lock
    first.wait()
    third = subprocess.run([*args, "--force"], capture_output=True, text=True, env=faults_env())
    assert third.returncode == 0, third.stderr
