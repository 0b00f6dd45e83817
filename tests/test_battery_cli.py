"""The battery, part 1 (issue 12): the command line, plugins that break, faults of the machine, folders that
are not what they seem. Each case: an input, the exit code, the one line it must print, nothing left behind.

Config and data cases are in test_battery_config.py, damaged folders in test_battery_damaged.py; a disk that
fills mid-run is in test_machine_faults.py (it needs a real small disk).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from battery_harness import case, expect_error, expect_warning, lorakit, snapshot, tiny_experiment

# ---- usage: one line, `lorakit: <command>: <problem> (see --help)`, exit 2 ------------------------------

USAGE = [
    case(["trian"], "lorakit: no such command 'trian' (did you mean train?)", id="unknown-command"),
    case(
        ["--verbos"], "lorakit: no such option '--verbos' (did you mean one of:", id="unknown-global-option"
    ),
    case(["ls", "--bogus"], "lorakit: ls: no such option '--bogus'", id="ls-unknown-option"),
    case(["ls", "--outpts", "x"], "(did you mean '--outputs'?)", id="ls-option-typo"),
    case(["train"], "lorakit: train: missing argument 'CONFIG_PATH'", id="train-no-config"),
    case(["train", "x.toml", "--nproc", "0"], "train: invalid value for '--nproc'", id="train-nproc-0"),
    case(["train", "x.toml", "--nproc", "two"], "train: invalid value for '--nproc'", id="train-nproc-word"),
    case(
        ["predict", "--batch-size", "many"], "predict: invalid value for '--batch-size'", id="predict-batch"
    ),
    case(
        ["predict", "--input", "/nonexistent/in.csv"],
        "predict: invalid value for '--input'",
        id="predict-input",
    ),
    case(["show"], "lorakit: show: missing argument 'EXP'", id="show-no-exp"),
    case(["cache", "bogus"], "lorakit: cache: no such command 'bogus'", id="cache-unknown"),
    case(["index", "rbuild"], "(did you mean 'rebuild'?)", id="index-typo"),
    case(
        ["compare", "--sort-by"],
        "lorakit: compare: option '--sort-by' requires an argument",
        id="compare-sort",
    ),
    case(["queue", "--x"], "lorakit: queue: no such option '--x'", id="queue-option"),
    case(["cancel"], "lorakit: cancel: missing argument 'JOB_ID'", id="cancel-no-job"),
    case(["estimate"], "lorakit: estimate: missing argument 'CONFIG_PATH'", id="estimate-no-config"),
    case(["submit"], "lorakit: submit: missing argument 'CONFIG_PATH'", id="submit-no-config"),
    case(["rollback", "--nonsense"], "lorakit: rollback: no such option '--nonsense'", id="rollback-option"),
    case(
        ["config", "show"], "lorakit: config show: missing argument 'CONFIG_PATH'", id="config-show-no-path"
    ),
    case(["plugins", "extra"], "lorakit: plugins: got unexpected extra argument (extra)", id="plugins-extra"),
    case(
        ["devices", "--json", "x"], "lorakit: devices: got unexpected extra argument (x)", id="devices-extra"
    ),
    case(
        ["run-parallel", "--bad"], "lorakit: run-parallel: no such option '--bad'", id="run-parallel-option"
    ),
    case(["scheduler", "--bad"], "lorakit: scheduler: no such option '--bad'", id="scheduler-option"),
]


@pytest.mark.parametrize(("argv", "expected"), USAGE)
def test_usage_errors_are_one_line(argv: list[str], expected: str, tmp_path: Path):
    before = snapshot(tmp_path)
    result = lorakit(*argv, cwd=tmp_path)
    assert result.code == 2, result
    assert result.err_lines == [result.err_lines[0]] and expected in result.err_lines[0], result.err
    assert result.err_lines[0].startswith("lorakit: ") and result.err_lines[0].endswith("--help)")
    assert result.out == "" and snapshot(tmp_path) == before


def test_a_config_path_that_is_a_folder_is_a_usage_error(tmp_path: Path):
    result = lorakit("train", str(tmp_path))
    expect_error(
        result, 2, f"lorakit: train: invalid value for 'CONFIG_PATH': File '{tmp_path}' is a directory"
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        case(
            ["train", "x.toml", "--resume", "--force"],
            "--resume and --force exclude each other",
            id="resume-force",
        ),
        case(["predict"], "give either --text (one or more) or --input FILE", id="predict-nothing"),
        case(["ls", "--filter", "bad"], "--filter 'bad': expected KEY<op>VALUE", id="ls-filter"),
        case(["cancel", "no-such-job"], "no-such-job", id="cancel-unknown-job"),
    ],
)
def test_wrong_combinations_are_one_error_line(argv: list[str], expected: str, tmp_path: Path):
    before = snapshot(tmp_path)
    result = lorakit(*argv, env={"LORAKIT_OUTPUTS": str(tmp_path / "outputs")}, cwd=tmp_path)
    expect_error(result, 2, expected)
    assert snapshot(tmp_path) == before


# ---- plugins: a broken plugin is reported like an import failure and left out; event hooks only warn ----

HOOKIMPL = "from lorakit import hookimpl\nfrom lorakit.specs import MetricSpec\n\n"

BROKEN_PLUGINS = {
    "import_error": ("raise ImportError('needs torchmetrics')\n", "ImportError: needs torchmetrics"),
    "syntax_error": ("def broken(:\n    pass\n", "SyntaxError"),
    "exits_at_import": ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    "register_raises": (
        HOOKIMPL + "@hookimpl\ndef lorakit_register_metrics(register):\n    raise RuntimeError('boom')\n",
        "lorakit_register_metrics raised RuntimeError: boom",
    ),
    "wrong_spec": (
        HOOKIMPL + "@hookimpl\ndef lorakit_register_metrics(register):\n    register('f2')\n",
        "registered a str as metrics; expected MetricSpec",
    ),
    "clash_with_builtin": (
        HOOKIMPL
        + "@hookimpl\ndef lorakit_register_metrics(register):\n"
        + "    register(MetricSpec(name='accuracy', compute=len))\n",
        "metric 'accuracy' is registered twice: by plugin 'metrics' (lorakit",
    ),
    "misspelled_hook": (
        HOOKIMPL + "@hookimpl\ndef lorakit_register_metric(register):\n    pass\n",
        "unknown hook lorakit_register_metric (did you mean lorakit_register_metrics?)",
    ),
    "bad_argument": (
        HOOKIMPL + "@hookimpl\ndef lorakit_register_metrics(registrar):\n    pass\n",
        "PluginValidationError",
    ),
    "half_registered": (  # the first hook works, the second raises: the whole plugin is left out
        HOOKIMPL
        + "from lorakit.specs import LossSpec\n"
        + "@hookimpl\ndef lorakit_register_metrics(register):\n"
        + "    register(MetricSpec(name='half_metric', compute=len))\n"
        + "@hookimpl\ndef lorakit_register_losses(register):\n    raise KeyError('weights')\n",
        "lorakit_register_losses raised KeyError: 'weights'",
    ),
}
MISSING_TARGETS = {
    "missing_attribute": ("{module}:nothing", "AttributeError"),
    "missing_module": ("lorakit_bt_not_installed_anywhere", "ModuleNotFoundError"),
}


def install_plugin(site: Path, name: str, source: str | None, target: str = "{module}") -> Path:
    """A plugin 'installed' in ``site``: a module and a dist-info whose entry point names it."""
    module = f"lorakit_bt_{name}"
    site.mkdir(parents=True, exist_ok=True)
    if source is not None:
        (site / f"{module}.py").write_text(source, encoding="utf-8")
    info = site / f"lorakit_bt_{name}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: lorakit-bt-{name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[lorakit]\n{name} = {target.format(module=module)}\n")
    return site


PLUGIN_CASES = [
    case(name, source, "{module}", reason, id=name) for name, (source, reason) in BROKEN_PLUGINS.items()
]
PLUGIN_CASES += [
    case(name, "X = 1\n", target, reason, id=name) for name, (target, reason) in MISSING_TARGETS.items()
]


@pytest.mark.parametrize(("name", "source", "target", "reason"), PLUGIN_CASES)
def test_a_broken_plugin_is_listed_with_its_reason_and_the_rest_works(name, source, target, reason, tmp_path):
    site = install_plugin(tmp_path / "site", name, source, target)
    result = lorakit("plugins", path=[site])
    assert result.code == 0, result
    failed = [line for line in result.out.splitlines() if line.startswith(f"{name} (")]
    assert len(failed) == 1 and failed[0].startswith(f"{name} (lorakit-bt-{name} 0.1): failed to load: ")
    assert reason in failed[0], failed
    assert "  metrics: accuracy" in result.out  # the built-ins are all there
    assert "half_metric" not in result.out
    assert "Traceback" not in result.err


@pytest.mark.parametrize(("name", "source", "target", "reason"), PLUGIN_CASES)
def test_a_broken_plugin_does_not_stop_train(name, source, target, reason, world):
    """train goes as far as it would without the plugin (here: to an unknown loss, named with the built-in
    ones), and says once which plugin was left out."""
    root, sets = world
    site = install_plugin(root / "site", name, source, target)
    before = snapshot(root / "outputs")
    result = train(root, [*sets, '--set=train.loss="nope"'], "--outputs", str(root / "outputs"), path=[site])
    assert result.code == 2, result
    assert "Traceback" not in result.err
    loaded, problem = result.err_lines
    assert loaded.startswith(f'Error loading plugin "{name}" (lorakit-bt-{name} 0.1): ') and reason in loaded
    assert problem.startswith("Error: ") and "unknown loss 'nope'" in problem and "cross_entropy" in problem
    assert snapshot(root / "outputs") == before


def test_a_raising_device_probe_is_a_warning(tmp_path: Path):
    source = HOOKIMPL + "@hookimpl\ndef lorakit_detect_devices():\n    raise OSError('NVML driver gone')\n"
    site = install_plugin(tmp_path / "site", "probe", source)
    result = lorakit("devices", "--json", path=[site])
    expect_warning(result, 'plugin "probe": lorakit_detect_devices raised OSError: NVML driver gone; ignored')
    assert isinstance(json.loads(result.out), list)


# ---- a world for commands that train: a tiny model, a config, an outputs folder ------------------------


@pytest.fixture
def world(tmp_path: Path, tiny_bert: Path):
    sets = tiny_experiment(tmp_path, tiny_bert)
    out = tmp_path / "outputs"
    keep = out / "keep_me"
    keep.mkdir(parents=True)
    (keep / "run.json").write_text('{"exp_id": "keep_me", "status": "completed"}', encoding="utf-8")
    return tmp_path, sets


def train(world_root: Path, sets: list[str], *args: str, **kwargs) -> object:
    return lorakit("train", str(world_root / "exp.toml"), *sets, *args, cwd=world_root, **kwargs)


# ---- folders that are not what they seem: --force replaces only experiment folders ---------------------


def _plain_folder(folder: Path) -> None:
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work", encoding="utf-8")


def _a_file(folder: Path) -> None:
    folder.write_text("not a folder", encoding="utf-8")


def _a_symlink(folder: Path) -> None:
    target = folder.parent.parent / "elsewhere"
    target.mkdir()
    (target / "run.json").write_text('{"status": "completed"}', encoding="utf-8")
    folder.symlink_to(target)


FOLDERS = [
    case(
        _plain_folder,
        ["--force"],
        "is not a lorakit experiment (no run.json); --force replaces only",
        id="force-plain",
    ),
    case(_plain_folder, [], "exists and is not a lorakit experiment (no run.json)", id="plain"),
    case(_plain_folder, ["--resume"], "exists and is not a lorakit experiment", id="resume-plain"),
    case(_a_file, ["--force"], "is a file, not an experiment folder", id="force-file"),
    case(_a_file, [], "is a file, not an experiment folder", id="file"),
    case(_a_symlink, ["--force"], "is a symbolic link, not an experiment folder", id="force-symlink"),
    case(_a_symlink, ["--resume"], "is a symbolic link, not an experiment folder", id="resume-symlink"),
]


@pytest.mark.parametrize(("make", "args", "expected"), FOLDERS)
def test_train_never_replaces_what_is_not_an_experiment_folder(world, make, args, expected):
    root, sets = world
    make(root / "outputs" / "exp")
    before = snapshot(root)
    result = train(root, sets, "--outputs", str(root / "outputs"), *args)
    expect_error(result, 2, expected)
    assert snapshot(root) == before
    assert (root / "outputs" / "keep_me" / "run.json").is_file()


# ---- faults of the machine: one line naming the path, exit 2, nothing written --------------------------


def _outputs_is_a_file(root: Path) -> tuple[str, str]:
    (root / "outputs_file").write_text("x", encoding="utf-8")
    return str(root / "outputs_file"), "lorakit: train: invalid value for '--outputs': Directory '"


def _locks_is_a_file(root: Path) -> tuple[str, str]:
    (root / "outputs" / ".locks").write_text("x", encoding="utf-8")
    return str(root / "outputs"), "outputs/.locks: not a directory (Not a directory)"


def _name_too_long(root: Path) -> tuple[str, str]:
    return str(root / ("o" * 300)), "name too long (File name too long)"


def _not_permitted(root: Path) -> tuple[str, str]:
    return "/sys/lorakit-battery-outputs", "/sys/lorakit-battery-outputs: operation not permitted"


def _under_a_file(root: Path) -> tuple[str, str]:
    (root / "plain").write_text("x", encoding="utf-8")
    return str(root / "plain" / "outputs"), "plain/outputs/.locks: not a directory (Not a directory)"


MACHINE = [
    case(_outputs_is_a_file, id="outputs-is-a-file"),
    case(_locks_is_a_file, id="locks-is-a-file"),
    case(_name_too_long, id="name-too-long"),
    case(_not_permitted, id="not-permitted"),
    case(_under_a_file, id="outputs-under-a-file"),
]


@pytest.mark.parametrize("make", MACHINE)
def test_faults_of_the_machine_are_one_line(world, make):
    root, sets = world
    outputs, expected = make(root)
    before = snapshot(root)
    result = train(root, sets, "--outputs", outputs)
    expect_error(result, 2, expected)
    assert snapshot(root) == before


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """One tiny experiment trained in this process, for the cases that need a real one."""
    root = tmp_path_factory.mktemp("trained")
    sets = tiny_experiment(root, tiny_bert)
    result = lorakit("train", str(root / "exp.toml"), *sets, "--outputs", str(root / "outputs"), cwd=root)
    assert result.code == 0, result
    (root / "texts.csv").write_text("text\n你好\n今天\n", encoding="utf-8")
    return root


def _full_disk(root: Path) -> tuple[list[str], str]:
    return ["--input", str(root / "texts.csv"), "--output", "/dev/full"], "/dev/full: disk full"


def _output_is_a_folder(root: Path) -> tuple[list[str], str]:
    return ["--input", str(root / "texts.csv"), "--output", str(root)], "is a directory"


def _input_is_a_fifo(root: Path) -> tuple[list[str], str]:
    fifo = root / "pipe.csv"
    if not fifo.exists():
        os.mkfifo(fifo)
    return ["--input", str(fifo)], "pipe.csv: not a regular file (a FIFO)"


@pytest.mark.parametrize("make", [_full_disk, _output_is_a_folder, _input_is_a_fifo])
def test_predict_faults_are_one_line(trained: Path, make):
    args, expected = make(trained)
    before = snapshot(trained)
    result = lorakit("predict", "exp", *args, "--outputs", str(trained / "outputs"), cwd=trained)
    expect_error(result, 2, expected)
    assert snapshot(trained) == before


def test_a_raising_event_hook_is_a_warning_and_the_run_completes(world):
    root, sets = world
    source = (
        HOOKIMPL
        + "@hookimpl\ndef lorakit_on_run_start(exp_id):\n    raise ConnectionError('tracker offline')\n"
        + "@hookimpl\ndef lorakit_on_epoch_end(exp_id, epoch):\n    raise ValueError(f'epoch {epoch}')\n"
    )
    site = install_plugin(root / "site", "tracker", source)
    result = train(root, sets, "--outputs", str(root / "outputs"), path=[site])
    expect_warning(result, 'plugin "tracker": lorakit_on_run_start raised ConnectionError: tracker offline')
    expect_warning(result, 'plugin "tracker": lorakit_on_epoch_end raised ValueError: epoch 1; ignored')
    run = json.loads((root / "outputs" / "exp" / "run.json").read_text(encoding="utf-8"))
    assert run["status"] == "completed"


# ---- concurrency: one run per experiment folder --------------------------------------------------------


def test_a_run_held_by_a_live_process_is_refused_naming_it(world):
    import subprocess
    import sys

    root, sets = world
    lock = root / "outputs" / ".locks" / "exp.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom lorakit.pidlock import PidLock\n"
            f"with PidLock({str(lock)!r}, RuntimeError):\n    print('held', flush=True)\n    time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = snapshot(root)
        result = train(root, sets, "--outputs", str(root / "outputs"), "--force")
        expect_error(result, 2, f"process {holder.pid} is training this experiment; wait for it or stop it")
        assert snapshot(root) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_process_is_taken_over(world):
    root, sets = world
    lock = root / "outputs" / ".locks" / "exp.lock"
    lock.parent.mkdir()
    lock.write_text("999999999\n", encoding="utf-8")  # a pid no process has; no flock held
    result = train(root, [*sets, '--set=train.loss="nope"'], "--outputs", str(root / "outputs"))
    expect_error(result, 2, "unknown loss 'nope'")  # it got past the lock to the config's own problem
    assert not lock.exists() and not lock.parent.exists()  # and cleaned up after itself
