"""Progress output: a tqdm bar on a terminal only; a redirected run writes plain lines and no carriage return."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from faceutil.progress import progress
from test_engine import write_fake_processed
from test_faults import REPO, TESTS, _TRAIN_CHILD, _train_argv


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_gets_one_line_per_tenth_and_no_carriage_return():
    out = io.StringIO()
    seen = list(progress(range(25), desc="processing", unit="img", stream=out))
    assert seen == list(range(25))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 10
    # a line is written when the count first reaches each tenth of 25: 3, 5, 8, 10, 13, 15, 18, 20, 23, 25
    assert [int(line.split()[1].split("/")[0]) for line in lines] == [3, 5, 8, 10, 13, 15, 18, 20, 23, 25]
    assert lines[-1].startswith("processing: 25/25 img (100 %), ")


def test_update_counts_chunks_and_silent_modes_write_nothing():
    out = io.StringIO()
    bar = progress(total=64, desc="processing", unit="img", stream=out)
    for _ in range(4):
        bar.update(16)
    bar.set_postfix(loss="0.1")
    bar.close()
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == [
        "processing: 16/64 img (25 %)", "processing: 32/64 img (50 %)", "processing: 48/64 img (75 %)",
        "processing: 64/64 img (100 %)"]
    for kwargs in ({"lines": False}, {"enabled": False}):
        quiet = io.StringIO()
        assert list(progress(range(5), stream=quiet, **kwargs)) == list(range(5))
        assert quiet.getvalue() == ""


def test_a_terminal_gets_the_tqdm_bar():
    term = FakeTerminal()
    assert list(progress(range(5), desc="epoch 1/1", stream=term)) == list(range(5))
    assert "\r" in term.getvalue() and "5/5" in term.getvalue()
    silent = FakeTerminal()
    list(progress(range(5), stream=silent, enabled=False))
    assert silent.getvalue() == ""


def test_redirected_training_and_processing_write_plain_lines(tmp_path):
    """The real command lines with their default --progress, output captured by pipes (not a terminal)."""
    train_dir = tmp_path / "train-crop"
    write_fake_processed(train_dir, 8)
    argv = [a for a in _train_argv(train_dir, tmp_path / "run") if not a.startswith("--progress")]
    argv = [("--epochs=2" if a.startswith("--epochs") else a) for a in argv]
    train = subprocess.run([sys.executable, "-c", _TRAIN_CHILD, str(REPO), str(TESTS), *argv], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    assert "\r" not in train.stdout + train.stderr
    assert [line.split(",")[0] for line in train.stdout.splitlines() if line.startswith("epoch ")] == [
        "epoch 1", "epoch 2"]

    from faceutil.facemodel import load_model
    from faceutil.synthetic import synthesize_dataset

    raw = tmp_path / "raw"
    synthesize_dataset(raw, "300W_LP", 4, seed=5, model=load_model("synthetic"))
    proc = subprocess.run([sys.executable, str(REPO / "processor.py"), f"-i={raw}", f"-o={tmp_path / 'crop'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert "\r" not in output and "processing: 4/4 img (100 %)" in output, output
