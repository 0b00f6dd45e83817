"""``lorakit serve``: a real uvicorn process on a free local port, real HTTP clients (httpx), two tiny
experiments on one base model: answers equal in-process predict, every bad request gets a one-line 4xx,
a completed experiment loads without a restart, a failed one is refused with its reason, and the active
experiment switches with ``lorakit rollback`` while requests are in flight, none failing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import run_cli

from lorakit import Experiment
from lorakit.testing import synthetic_frame

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEXTS = [
    "该客户多次逾期未还，建议驳回。",
    "还款按时，资料齐全。",
    "收入有波动",
    "网点递交，同意审批",
    "这笔贷款",
]


def _config(root: Path, tiny_bert: Path, name: str, seed: int) -> dict:
    return {
        "exp_id": name,
        "seed": seed,
        "data": {
            "raw_data_path": str(root / "train.csv"),
            "cache_dir": str(root / "cache"),
            "max_len": 32,
            "val_ratio": 0.25,
            "label_subset": {"risk_level": ["低风险", "中风险", "高风险"], "is_adopt": ["采纳", "不采纳"]},
        },
        "model": {"arch": str(tiny_bert), "lora": {"rank": 4, "alpha": 8}},
        "train": {"batch_size": 16, "lr": 5e-3, "epochs": 1},
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_bert: Path):
    """Outputs with experiments a, b (served), c (loaded later) and a failed copy; a server on them."""
    root = tmp_path_factory.mktemp("serve")
    synthetic_frame(120, seed=5).to_csv(root / "train.csv", index=False)
    outputs = root / "outputs"
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        Experiment(_config(root, tiny_bert, name, seed), outputs=outputs).run(echo=False)
    failed = outputs / "broken"
    shutil.copytree(outputs / "a", failed)
    run = json.loads((failed / "run.json").read_text(encoding="utf-8"))
    run.update(exp_id="broken", status="failed", error="RuntimeError: out of memory at step 12")
    (failed / "run.json").write_text(json.dumps(run), encoding="utf-8")
    assert run_cli("rollback", "--exp-id", "a", "--outputs", str(outputs), cwd=root).returncode == 0

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "lorakit", "serve", "a", "b", "--active", "--outputs", str(outputs)]
    cmd += [
        "--port",
        str(port),
        "--token",
        TOKEN,
        "--max-texts",
        "8",
        "--max-chars",
        "200",
        "--max-body-bytes",
        "4000",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read()) from None
            time.sleep(0.2)
    yield {"url": url, "outputs": outputs, "root": root, "proc": proc, "tiny_bert": tiny_bert}
    proc.terminate()
    proc.wait(timeout=30)


def post(served, body, *, headers=AUTH, path="/v1/predict"):
    return httpx.post(served["url"] + path, json=body, headers=headers, timeout=60)


def test_concurrent_requests_for_two_experiments_match_in_process_predict(served):
    expected = {name: Experiment.load(name, outputs=served["outputs"]).predict(TEXTS) for name in ("a", "b")}
    jobs = [("a" if i % 2 else "b", TEXTS[i % 5 :] + TEXTS[: i % 5]) for i in range(24)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda job: post(served, {"experiment": job[0], "texts": job[1]}), jobs))
    for (name, texts), response in zip(jobs, answers, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["experiment"] == name
        for text, got in zip(texts, body["predictions"], strict=True):
            want = expected[name][TEXTS.index(text)]
            for task, value in want.items():
                assert got[task]["label"] == value["label"]
                assert got[task]["probabilities"] == pytest.approx(value["probabilities"], abs=1e-5)
    # both experiments answer differently: they really run their own adapters and heads
    assert expected["a"] != expected["b"]
    metrics = httpx.get(served["url"] + "/metrics", headers=AUTH).text
    assert 'lorakit_requests_total{experiment="a",code="200"}' in metrics
    assert "lorakit_batch_rows_bucket" in metrics and "lorakit_experiments_loaded 2" in metrics


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("not json", 400, "body is not JSON"),
        ([1, 2], 400, 'expected a JSON object {"experiment": ..., "texts": [...]}'),
        ({"texts": "one"}, 400, "texts must be a list of strings"),
        ({"texts": []}, 400, "texts is empty"),
        ({"texts": ["x"], "model": "a"}, 400, "unknown key 'model'; expected experiment and texts"),
        ({"experiment": 3, "texts": ["x"]}, 400, "experiment must be a string"),
        ({"texts": ["x"] * 9}, 413, "9 texts, more than the limit of 8"),
        ({"texts": ["长" * 201]}, 413, "texts[0] has 201 characters, more than the limit of 200"),
        ({"texts": ["x" * 150] * 8 * 4}, 413, "more than the limit of 4,000"),
        ({"experiment": "nope", "texts": ["x"]}, 404, "experiment 'nope' is not loaded (loaded: a, b"),
    ],
    ids=[
        "json",
        "shape",
        "texts-type",
        "empty",
        "unknown-key",
        "experiment-type",
        "too-many",
        "too-long",
        "body",
        "unknown",
    ],
)
def test_bad_requests_get_one_line_4xx(served, body, status, message):
    if isinstance(body, str):
        response = httpx.post(served["url"] + "/v1/predict", content=body, headers=AUTH)
    else:
        response = post(served, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error
    # the server still answers good requests
    assert post(served, {"experiment": "a", "texts": ["ok"]}).status_code == 200


def test_token_is_required(served):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = post(served, {"experiment": "a", "texts": ["x"]}, headers=headers)
        assert response.status_code == 401 and "bearer token" in response.json()["error"]
    assert httpx.get(served["url"] + "/healthz").status_code == 200  # health checks need no token


def test_load_a_completed_experiment_and_refuse_a_failed_one(served):
    loaded = post(served, None, path="/v1/experiments/c/load")
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["loaded"]["shared_base"] is True
    response = post(served, {"experiment": "c", "texts": TEXTS[:2]})
    assert response.status_code == 200
    want = Experiment.load("c", outputs=served["outputs"]).predict(TEXTS[:2])
    assert [p["risk_level"]["label"] for p in response.json()["predictions"]] == [
        w["risk_level"]["label"] for w in want
    ]

    refused = post(served, None, path="/v1/experiments/broken/load")
    assert refused.status_code == 409
    assert refused.json()["error"] == (
        "broken: failed (RuntimeError: out of memory at step 12); only completed experiments are served"
    )
    missing = post(served, None, path="/v1/experiments/ghost/load")
    assert missing.status_code == 404 and "no experiment 'ghost'" in missing.json()["error"]
    listed = httpx.get(served["url"] + "/v1/experiments", headers=AUTH).json()
    assert sorted(e["exp_id"] for e in listed["experiments"]) == ["a", "b", "c"]


def test_rollback_switches_the_active_experiment_while_requests_fly(served):
    assert httpx.get(served["url"] + "/healthz").json()["active"] == "a"
    statuses: list[int] = []
    answered_by: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(headers=AUTH, timeout=60) as http:
            while not stop.is_set():
                response = http.post(served["url"] + "/v1/predict", json={"texts": TEXTS})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    answered_by.append(response.json()["experiment"])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        rollback = run_cli(
            "rollback", "--exp-id", "b", "--outputs", str(served["outputs"]), cwd=served["root"]
        )
        assert rollback.returncode == 0, rollback.stderr
        deadline = time.time() + 30
        while time.time() < deadline and "b" not in answered_by[-4:]:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert statuses and set(statuses) == {200}
    assert answered_by[0] == "a" and answered_by[-1] == "b"
    # once switched, it stays switched
    assert "a" not in answered_by[answered_by.index("b") + 8 :]


def test_without_the_serve_extra_the_error_names_it(tmp_path):
    code = (
        "import sys; sys.modules['starlette'] = None; from lorakit.cli import main; main(['serve', '--all'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "LORAKIT_OUTPUTS": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "Error: lorakit serve needs the serve extra: pip install 'lorakit[serve]'"


@pytest.mark.parametrize(
    ("lengths", "max_rows", "expected"),
    [
        # one short text among long ones: padding it to 60 costs less than a forward pass of its own
        ([60, 58, 55, 50], 64, [[3, 2, 1, 0]]),  # shortest first
        # short and long texts: two passes waste far fewer padded tokens than one
        ([5] * 16 + [120] * 16, 64, [list(range(16)), list(range(16, 32))]),
        # never more than max_rows rows in a pass
        ([10] * 5, 2, [[0], [1, 2], [3, 4]]),
        ([], 8, []),
    ],
)
def test_rows_are_grouped_by_length_to_waste_few_padded_tokens(lengths, max_rows, expected):
    from lorakit.serving.pool import length_groups

    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups = length_groups(order, lengths, max_rows)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    assert all(len(group) <= max_rows for group in groups)
    assert groups == expected


def test_sighup_reloads_a_retrained_experiment_without_dropping_requests(served):
    assert post(served, None, path="/v1/experiments/c/load").status_code == 200

    def loaded_at() -> str:
        listed = httpx.get(served["url"] + "/v1/experiments", headers=AUTH, timeout=30).json()
        return next(e["loaded_at"] for e in listed["experiments"] if e["exp_id"] == "c")

    before = loaded_at()
    # c trained again with another seed: a different model in the same folder
    Experiment(_config(served["root"], served["tiny_bert"], "c", 11), outputs=served["outputs"]).run(
        force=True, echo=False
    )
    want = Experiment.load("c", outputs=served["outputs"]).predict(TEXTS)
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(headers=AUTH, timeout=60) as http:
            while not stop.is_set():
                statuses.append(
                    http.post(
                        served["url"] + "/v1/predict", json={"experiment": "c", "texts": TEXTS}
                    ).status_code
                )

    thread = threading.Thread(target=client)
    thread.start()
    try:
        time.sleep(1.1)  # loaded_at has one-second resolution
        served["proc"].send_signal(signal.SIGHUP)
        deadline = time.time() + 60
        while time.time() < deadline and loaded_at() == before:
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert loaded_at() != before
    assert statuses and set(statuses) == {200}
    got = post(served, {"experiment": "c", "texts": TEXTS}).json()["predictions"]
    for answer, expected in zip(got, want, strict=True):
        for task, value in expected.items():
            assert answer[task]["probabilities"] == pytest.approx(value["probabilities"], abs=1e-5)
