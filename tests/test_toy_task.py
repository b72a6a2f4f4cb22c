"""A task added from outside the package (``tests/toy_task``), registered in one place: ``MULTIMODAL_TASKS``.

Registered, it is trained by ``multimodal fit``, run by ``multimodal predict``, loaded by ``multimodal.load`` in a
fresh process and served by ``multimodal serve --word_counter``, each in its own process with no edit to
``multimodal``. Unregistered, its checkpoint is refused in one line.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
IMAGES = ROOT / "examples" / "fashion-products" / "images"
REGISTRATION = {"MULTIMODAL_TASKS": "toy_task.task"}  # the one line that adds the task


def registered_env() -> dict[str, str]:
    """This process's environment with the toy task importable (``tests/`` on the path) and registered."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **REGISTRATION, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``multimodal <args>`` with the toy task registered; fails the test on a non-zero exit."""
    proc = subprocess.run([sys.executable, "-m", "multimodal.cli", *args], cwd=ROOT, env=registered_env(),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy task trained by ``multimodal fit --config tests/toy_task/tiny.yaml`` (12 steps, seconds)."""
    root = tmp_path_factory.mktemp("word_count")
    run(["fit", "--config", "tests/toy_task/tiny.yaml", "--trainer.default_root_dir", str(root)])
    (ckpt,) = root.glob("checkpoints/*.ckpt")
    return ckpt


@pytest.fixture(scope="module")
def rows(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """``multimodal predict`` of the toy checkpoint over five sample products (no title column: photos only)."""
    folder = tmp_path_factory.mktemp("predict")
    manifest = folder / "new.csv"
    manifest.write_text("id,image\n1580,1580.jpg\n1584,1584.jpg\n1595,1595.jpg\n1636,1636.jpg\n1759,1759.jpg\n")
    out = folder / "words.jsonl"
    proc = run(["predict", "--ckpt_path", str(checkpoint), "--input", str(manifest), "--image_root", str(IMAGES),
                "--out", str(out), "--no_progress"])  # fmt: skip
    assert json.loads(proc.stdout.strip().splitlines()[-1])["rows"] == 5
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_predict_writes_a_row_per_input_in_order(rows: list[dict]) -> None:
    assert [r["id"] for r in rows] == ["1580", "1584", "1595", "1636", "1759"]
    assert all(set(r) == {"id", "words"} for r in rows)
    # Trained: the sample's titles have 3 to 8 words; the untrained head starts near 0.
    assert all(2 < r["words"] < 12 for r in rows), rows


def test_python_api_in_a_fresh_process(checkpoint: Path, rows: list[dict]) -> None:
    script = (
        "import json, sys, multimodal\n"
        "api = multimodal.load(sys.argv[1])\n"
        "df = api.predict([sys.argv[2]])\n"
        "print(json.dumps({'api': type(api).__name__, 'words': float(df['words'][0])}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(checkpoint), str(IMAGES / "1595.jpg")], cwd=ROOT,
                          env=registered_env(), capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["api"] == "WordCounts"
    assert math.isclose(answer["words"], rows[2]["words"], rel_tol=1e-4)  # the batch job's row for 1595


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_on_its_route(checkpoint: Path, rows: list[dict], tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "multimodal.cli", "serve", "--word_counter", str(checkpoint),
                                 "--port", str(port), "--accelerator", "cpu"], cwd=ROOT, env=registered_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while not _healthy(url):
            assert proc.poll() is None and time.time() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        photo = (IMAGES / "1580.jpg").read_bytes()
        answer = httpx.post(f"{url}/words", files={"image": ("1580.jpg", photo)}, data={"id": "a"}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["id"] == "a"
        assert math.isclose(answer.json()["words"], rows[0]["words"], rel_tol=1e-4)
        assert httpx.post(f"{url}/words", data={"id": "a"}, timeout=60).status_code == 400  # no photo
        assert "--tagger" in httpx.post(f"{url}/tag", timeout=10).json()["detail"]  # built-in task, not loaded
        assert "word_counter" in httpx.get(f"{url}/info", timeout=10).json()["model"]["models"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).text == "ok"
    except httpx.HTTPError:
        return False


def test_unregistered_its_checkpoint_is_refused_in_one_line(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from multimodal.cli import main

    monkeypatch.delenv("MULTIMODAL_TASKS", raising=False)
    with pytest.raises(SystemExit) as exit:
        main(["predict", "--ckpt_path", str(checkpoint), "--input", str(IMAGES), "--out", str(tmp_path / "o.jsonl")])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "toy_task.model.WordCounter" in err and "MULTIMODAL_TASKS" in err
    assert not (tmp_path / "o.jsonl").exists()
