"""Fault injection (issue 7): hard kills of the processor and of training, a folder of bad samples, hostile
checkpoints and bad configurations. Figures and commands: benchmarks/results/reliability.md.

Complements tests/test_processor.py (single-process SIGKILL, first bad-input kinds) and tests/test_engine.py
(in-process resume, checkpoint loader); helpers are imported from both rather than repeated.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

import processor
import torchrun
from engine.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from faceutil import sampleio
from faceutil.facemodel import load_model
from faceutil.process import output_paths, process_dataset
from faceutil.synthetic import synthesize_dataset
from test_engine import TinyNet, write_fake_processed
from test_processor import _copy_pair, _tree

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------ shared inputs
@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> tuple[Path, list[str], Path]:
    """Three synthetic 300W-LP-format samples (cloned under many names below) and one AFLW2000-format sample."""
    root = tmp_path_factory.mktemp("seeds")
    face_model = load_model("synthetic")
    names = synthesize_dataset(root / "lp", "300W_LP", 3, seed=21, model=face_model)
    synthesize_dataset(root / "aflw", "AFLW2000", 1, seed=22, model=face_model)
    return root / "lp", names, root / "aflw"


def _mat(path: Path) -> dict:
    return {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}


def _stderr_sentence(text: str) -> str:
    """The single non-empty stderr line (asserts there is exactly one and no traceback)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# ------------------------------------------------------------------------------------------------ processor: SIGKILL
def test_processor_two_workers_killed_then_rerun_is_byte_identical(seeds, tmp_path):
    """SIGKILL to the whole process group of `processor.py --thread=2` half-way; the rerun completes it."""
    seed_dir, seed_names, _ = seeds
    src = tmp_path / "in"
    src.mkdir()
    # 64 = four full worker tasks of faceutil.process.CHUNK = 16 samples (a one-sample task would meet the
    # batch-size dependence that test_resume_of_one_unfinished_sample_is_byte_identical pins down); enough work left
    # after the 3rd finished sample that a slow poll on a busy machine still kills it half-way
    count = 64
    for i in range(count):
        _copy_pair(seed_dir, seed_names[i % 3], src, f"face_{i:02d}")
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "processor.py"), f"-i={src}", f"-o={out}", "--thread=2", "--progress=False"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob("*/*_bbox_info.mat"))) < 3:
        time.sleep(0.02)
    _kill_group(proc.pid)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    _wait_group_gone(proc.pid)                   # the pool workers died with their parent
    done = len(list(out.glob("*/*_bbox_info.mat")))
    assert 0 < done < count, done                # it really was stopped half-way

    ref = tmp_path / "ref"                       # uninterrupted, one process
    assert process_dataset(src, ref, progress=False).processed == count
    expect = _tree(ref)
    # whatever the kill left visible is complete (atomic writes); only hidden temp files may be partial
    left = {k: v for k, v in _tree(out).items() if not Path(k).name.startswith(".")}
    assert all(expect[k] == v for k, v in left.items()), [k for k, v in left.items() if expect.get(k) != v][:5]

    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"processed {count - done}, already done {done}, skipped 0" in rerun.stdout
    assert _tree(out) == expect
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


def test_resume_of_one_unfinished_sample_is_byte_identical(seeds, tmp_path):
    """A kill between a sample's posmap and its bbox_info (the last file) leaves it unfinished: the rerun then
    processes that sample alone, and must still write the bytes an uninterrupted run writes."""
    seed_dir, _, _ = seeds
    ref = tmp_path / "ref"
    process_dataset(seed_dir, ref, progress=False)
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    name = sorted(p.name for p in out.iterdir() if p.is_dir())[1]
    output_paths(out, name)["bbox_info"].unlink()
    (out / "index.tsv").unlink()
    summary = process_dataset(seed_dir, out, progress=False)
    assert (summary.processed, summary.already_done) == (1, 2)
    assert _tree(out) == _tree(ref)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:                  # already gone: the assertions that follow say why
        pass


def _wait_group_gone(pgid: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes of group {pgid} survived SIGKILL")


# ------------------------------------------------------------------------------------------------ processor: bad samples
def _write_png_as_jpg(src_jpg: Path, dst: Path) -> None:
    """A PNG file (same pixels as `src_jpg`) under a .jpg name."""
    from PIL import Image

    Image.fromarray(sampleio.read_image(src_jpg)).save(dst, format="PNG")
    assert dst.read_bytes().startswith(b"\x89PNG")


def _bad_folder(seed_dir: Path, seed: str, root: Path) -> tuple[Path, list[str], dict[str, str], Path]:
    """A raw folder mixing good samples with 14 kinds of bad ones.

    Returns (folder, good names, {bad name: word its reason must contain}, output folder with a pre-placed blocker).
    """
    src = root / "in"
    src.mkdir()
    out = root / "out"
    good = ["good_plain", "visage é 顔 01", "with  two spaces", "png_as_jpg", "upper_suffix"]
    _copy_pair(seed_dir, seed, src, "good_plain")
    _copy_pair(seed_dir, seed, src, "visage é 顔 01")          # unicode and spaces: a good sample
    _copy_pair(seed_dir, seed, src, "with  two spaces")
    _write_png_as_jpg(seed_dir / f"{seed}.jpg", src / "png_as_jpg.jpg")   # content decides the format: good
    shutil.copy(seed_dir / f"{seed}.mat", src / "png_as_jpg.mat")
    shutil.copy(seed_dir / f"{seed}.jpg", src / "upper_suffix.JPG")
    shutil.copy(seed_dir / f"{seed}.mat", src / "upper_suffix.mat")

    bad: dict[str, str] = {}

    def clone(name: str, word: str) -> tuple[Path, Path]:
        bad[name] = word
        return _copy_pair(seed_dir, seed, src, name)

    j, _ = clone("truncated_jpg", "truncated")
    j.write_bytes(j.read_bytes()[: j.stat().st_size // 2])
    j, _ = clone("zero_byte_jpg", "empty (0 bytes)")
    j.write_bytes(b"")
    j, _ = clone("text_as_jpg", "not a readable image")
    j.write_text("this is not an image\n")
    _, m = clone("missing_mat", ".mat is missing")
    m.unlink()
    _, m = clone("empty_mat", "empty (0 bytes)")
    m.write_bytes(b"")
    _, m = clone("garbage_mat", "not a readable MATLAB")
    m.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    edits = {
        "mat_without_shape": ("'Shape_Para'", lambda d: d.pop("Shape_Para")),
        "mat_without_pose": ("'Pose_Para'", lambda d: d.pop("Pose_Para")),
        "nan_pose": ("NaN", lambda d: d["Pose_Para"].__setitem__((0, 1), np.nan)),
        "inf_shape": ("infinite", lambda d: d["Shape_Para"].__setitem__((3, 0), np.inf)),
        "huge_expression": ("Exp_Para", lambda d: d["Exp_Para"].__setitem__((0, 0), 1e9)),
        "huge_scale": ("scale", lambda d: d["Pose_Para"].__setitem__((0, 6), 1e6)),
        "absurd_angle": ("full turn", lambda d: d["Pose_Para"].__setitem__((0, 0), 40.0)),
        "face_outside": ("outside the", lambda d: d["Pose_Para"].__setitem__((0, 3), d["Pose_Para"][0, 3] + 5000)),
        "text_pose": ("not a numeric", lambda d: d.__setitem__("Pose_Para", "0 0 0 1 1 1 1")),
    }
    for name, (word, edit) in edits.items():
        _, m = clone(name, word)
        d = _mat(m)
        edit(d)
        scipy.io.savemat(m, d)
    # an output the processor cannot write. Tests run as root, where chmod does not stop writes, so a folder
    # stands where the crop file must go.
    clone("blocked_output", "folder of that name is in the way")
    output_paths(out, "blocked_output")["image"].mkdir(parents=True)
    # a second sample with an existing name (in a sub-folder that sorts after the first)
    (src / "zz_sub").mkdir()
    _copy_pair(seed_dir, seed, src / "zz_sub", "good_plain")
    return src, good, bad, out


def test_folder_of_bad_samples(seeds, tmp_path, capsys):
    seed_dir, seed_names, _ = seeds
    src, good, bad, out = _bad_folder(seed_dir, seed_names[0], tmp_path)
    assert len(bad) >= 10

    code = processor.main([f"-i={src}", f"-o={out}", "--progress=False"])
    text = capsys.readouterr().out
    assert code == 1                                            # something was skipped
    assert f"processed {len(good)}, already done 0, skipped {len(bad) + 1}" in text   # + the duplicate
    rows = {r.split("\t")[0]: r.split("\t")[1:] for r in (out / "index.tsv").read_text("utf-8").splitlines()[1:]}
    for name in good:                                           # every good sample is processed
        assert rows[name] == ["ok", ""], name
        paths = output_paths(out, name)
        assert sampleio.read_image(paths["image"]).shape == (256, 256, 3)
        posmap = np.load(paths["posmap"])
        assert posmap.shape == (256, 256, 3) and np.isfinite(posmap).all()
        assert sampleio.read_bbox_info(paths["bbox_info"])["image_size"] == (450, 450)
    # the PNG was read as the same pixels as the JPEG it was made from
    assert np.array_equal(sampleio.read_image(src / "png_as_jpg.jpg"),
                          sampleio.read_image(seed_dir / f"{seed_names[0]}.jpg"))
    for name, word in bad.items():                              # every bad one is named with its reason
        line = next((ln for ln in text.splitlines() if ln.startswith(f"  skipped {name}: ")), None)
        assert line is not None and word.lower() in line.lower(), (name, line)
        assert rows[name][0] == "skipped" and word.lower() in rows[name][1].lower(), (name, rows[name])
        assert "\n" not in rows[name][1]
        made = [p for p in (out / name).rglob("*") if p.is_file()] if (out / name).exists() else []
        assert not made, made                                   # nothing half-written for a bad sample
    dup = [ln for ln in text.splitlines() if ln.startswith("  skipped zz_sub/good_plain.jpg: duplicate sample name")]
    assert len(dup) == 1 and rows["zz_sub/good_plain.jpg"][0] == "skipped"  # the duplicate has its own index row
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    # a rerun finds the good ones done and reports the same bad ones again
    code = processor.main([f"-i={src}", f"-o={out}", "--progress=False"])
    again = capsys.readouterr().out
    assert code == 1 and f"processed 0, already done {len(good)}, skipped {len(bad) + 1}" in again


def test_names_with_tab_or_line_break_keep_the_index_readable(seeds, tmp_path, capsys):
    from data.index import read_index

    seed_dir, seed_names, _ = seeds
    src = tmp_path / "in"
    src.mkdir()
    for new in ("plain", "a\ttab", "line\nbreak"):
        _copy_pair(seed_dir, seed_names[0], src, new)
    processor.main([f"-i={src}", f"-o={tmp_path / 'out'}", "--progress=False"])
    capsys.readouterr()
    assert "plain" in read_index(tmp_path / "out")


def test_clean_folder_exits_zero(seeds, tmp_path, capsys):
    seed_dir, seed_names, _ = seeds
    src = tmp_path / "in"
    src.mkdir()
    _copy_pair(seed_dir, seed_names[1], src, "only")
    assert processor.main([f"-i={src}", f"-o={tmp_path / 'out'}", "--progress=False"]) == 0
    assert "processed 1, already done 0, skipped 0" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ training: SIGKILL
class PausingTinyNet(TinyNet):
    """TinyNet that stops at its k-th training forward when E2TK_FAULT_PAUSE_AT=k (and writes the file named by
    E2TK_FAULT_MARKER), so a test can SIGKILL the run at a known point inside an epoch. Same weights as TinyNet."""

    def forward(self, x):
        out = super().forward(x)
        pause_at = os.environ.get("E2TK_FAULT_PAUSE_AT")
        if self.training and pause_at is not None and self.calls == int(pause_at):
            Path(os.environ["E2TK_FAULT_MARKER"]).write_text(str(self.calls))
            time.sleep(600)
        return out


def build_tiny(**kwargs) -> PausingTinyNet:
    """Builder registered as model "tiny" (here through monkeypatch, in the child by _TRAIN_CHILD)."""
    return PausingTinyNet(**kwargs)


#: the killed child: registers "tiny" in the model registry, then runs the real command line
_TRAIN_CHILD = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from model.registry import register_model
import test_faults
register_model("tiny")(test_faults.build_tiny)
import torch
torch.set_num_threads(1)
import torchrun
sys.exit(torchrun.main(sys.argv[3:]))
"""


def _train_argv(train_dir: Path, out: Path) -> list[str]:
    return ["-train=True", "-test=False", f"-td={train_dir}", "--model=tiny", '--model-kwargs={"width": 4}',
            "--epochs=3", "--batchSize=2", "--numWorker=0", "--lr=1e-3", "--warmup=0", "--val-fraction=0.2",
            "--seed=3", "--device=cpu", "--bfm=synthetic", "--progress=False", f"--out={out}"]


def test_training_killed_mid_epoch_then_resume_gives_the_same_weights(tmp_path, monkeypatch, capsys):
    from model import registry

    train_dir = tmp_path / "train-crop"
    write_fake_processed(train_dir, 8)          # 6 training samples, batch 2: 3 steps per epoch
    # the interrupted run: SIGKILL at the 2nd of 3 steps of epoch 2 (after one optimiser step of that epoch)
    killed = tmp_path / "killed"
    marker = tmp_path / "paused"
    env = {**os.environ, "E2TK_FAULT_PAUSE_AT": "5", "E2TK_FAULT_MARKER": str(marker)}
    child = subprocess.Popen([sys.executable, "-c", _TRAIN_CHILD, str(REPO), str(TESTS),
                              *_train_argv(train_dir, killed)], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None and not marker.exists():
        time.sleep(0.05)
    _kill_group(child.pid)
    stdout, stderr = child.communicate()
    assert marker.exists(), (stdout, stderr)
    assert child.returncode == -signal.SIGKILL
    interrupted = load_checkpoint(killed / "last.pth")          # complete and loadable: the end of epoch 1
    assert interrupted["epoch"] == 1
    assert not [p for p in killed.rglob("*.tmp")]

    # the same command in this process: uninterrupted, and resumed from the killed run's folder
    monkeypatch.setitem(registry._BUILDERS, "tiny", build_tiny)
    monkeypatch.setenv("E2TK_FAULT_MARKER", str(tmp_path / "unused"))
    monkeypatch.delenv("E2TK_FAULT_PAUSE_AT", raising=False)
    straight = tmp_path / "straight"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                    # as in the child: the thread count changes float reductions
    try:
        assert torchrun.main(_train_argv(train_dir, straight)) == 0
        assert torchrun.main([*_train_argv(train_dir, killed), "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "resuming" in capsys.readouterr().out

    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(killed / "last.pth")
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    untimed = [[{k: v for k, v in h.items() if k != "train_seconds"} for h in c["history"]] for c in (a, b)]
    assert untimed[0] == untimed[1]
    assert not torch.equal(interrupted["model"]["down.weight"], b["model"]["down.weight"])   # it did train on


# ------------------------------------------------------------------------------------------------ hostile checkpoints
class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_bad_checkpoints_are_one_sentence_and_run_no_code(seeds, tmp_path):
    _, _, aflw = seeds
    good = save_checkpoint(tmp_path / "tiny.pth", make_checkpoint(TinyNet(), "tiny", {"width": 4}))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    other = save_checkpoint(tmp_path / "e2tkface.pth", make_checkpoint(TinyNet(), "e2tkface", {"encoder": "cnn"}))
    marker = tmp_path / "code_ran"
    hostile = tmp_path / "hostile.pth"
    torch.save({"format": "e2tkface-checkpoint", "model": {}, "payload": _RunsCode(marker)}, hostile)
    cases = {  # checkpoint, extra flags, words of the sentence
        "truncated": (truncated, [], "Cannot read the checkpoint"),
        "other model": (other, ["--model=prnet"], "holds a 'e2tkface' model, not --model='prnet'"),
        "runs code": (hostile, [], "Refusing to load"),
    }
    procs = {
        label: subprocess.Popen([sys.executable, str(REPO / "torchrun.py"), "-train=False", "-test=True",
                                 f"-pd={aflw}", f"--loadModelPath={path}", "--device=cpu", "--bfm=synthetic",
                                 "--progress=False", *flags], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        for label, (path, flags, _) in cases.items()}       # started together: most of the cost is importing
    for label, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        path, _, words = cases[label]
        assert proc.returncode == 1, (label, stderr)
        line = _stderr_sentence(stderr)
        assert words in line and str(path) in line, (label, line)
    assert not marker.exists()                                  # the pickle's command never ran


def test_weights_of_another_architecture_are_one_sentence(seeds, tmp_path, capsys):
    """A bare state_dict (no model name, like published weights) that does not fit the model asked for."""
    _, _, aflw = seeds
    path = tmp_path / "bare.pth"
    torch.save(TinyNet().state_dict(), path)
    code = torchrun.main(["-train=False", "-test=True", f"-pd={aflw}", f"--loadModelPath={path}", "--model=prnet",
                          "--device=cpu", "--bfm=synthetic", "--progress=False"])
    line = _stderr_sentence(capsys.readouterr().err)
    assert code == 1 and "do not fit this model" in line and str(path) in line


_NOT_A_CHECKPOINT = {
    "random bytes": np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
    "text file": b"hello, I am not a checkpoint\n",
    "zero bytes": b"",
}


@pytest.mark.parametrize("kind", [
    "random bytes",
    "text file",
    "zero bytes",
])
def test_files_that_are_no_checkpoint_are_one_sentence(seeds, tmp_path, capsys, kind):
    _, _, aflw = seeds
    path = tmp_path / "model.pth"
    path.write_bytes(_NOT_A_CHECKPOINT[kind])
    code = torchrun.main(["-train=False", "-test=True", f"-pd={aflw}", f"--loadModelPath={path}", "--device=cpu",
                          "--bfm=synthetic", "--progress=False"])
    line = _stderr_sentence(capsys.readouterr().err)
    assert code == 1 and str(path) in line
    assert not line.rstrip().endswith(": .")                     # the sentence gives a reason


# ------------------------------------------------------------------------------------------------ bad configurations
def test_bad_configurations_are_one_sentence(seeds, tmp_path, capsys):
    seed_dir, _, aflw = seeds
    train_dir = tmp_path / "train-crop"
    train_dir.mkdir()
    missing = tmp_path / "no such folder"
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    torch_cases = [
        (["-train=False", "-test=True", f"-pd={missing}", f"--loadModelPath={blocker}"], "does not exist"),
        (["-train=True", f"-td={missing}"], "does not exist"),
        (["-train=True", f"-td={train_dir}", "--batch-size=-3"], "at least 1"),
        (["-train=True", f"-td={train_dir}", "--batchSize=0"], "at least 1"),
        (["-train=True", f"-td={train_dir}", "--model=resnet50"], "Unknown --model"),
        (["-train=True", f"-td={train_dir}", "--encoder=vit"], "Unknown --encoder"),
        (["-train=False", "-test=True", f"-pd={aflw}", f"--loadModelPath={missing / 'x.pth'}"], "does not exist"),
    ]
    for argv, word in torch_cases:
        code = torchrun.main(argv)
        line = _stderr_sentence(capsys.readouterr().err)
        assert code == 2 and word in line, (argv, line)
    proc_cases = [
        ([f"-i={missing}", f"-o={tmp_path / 'o'}"], "does not exist"),
        ([f"-i={seed_dir}", f"-o={blocker / 'sub'}"], "not writable"),
        ([f"-i={seed_dir}", f"-o={tmp_path / 'o'}", "--thread=-2"], "at least 1"),
        ([f"-i={seed_dir}", f"-o={tmp_path / 'o'}", f"--bfm={missing}"], "neither 'synthetic' nor a folder"),
        ([f"-i={seed_dir}", f"-o={tmp_path / 'o'}", f"--bfm={tmp_path}"], "BFM.mat is missing"),
        ([f"-i={seed_dir}", f"-o={tmp_path / 'o'}", "--shard=2/2"], "shard"),
        (["--synthesize=300W_LP", "--count=-1", f"-o={tmp_path / 'o'}"], "at least 1"),
    ]
    for argv, word in proc_cases:
        code = processor.main([*argv, "--progress=False"])
        line = _stderr_sentence(capsys.readouterr().err)
        assert code == 2 and word in line, (argv, line)
    # a refused run writes no sample output. (An unusable --bfm is only found after the output folder exists;
    # process_dataset then still writes an index.tsv holding just the header: reported, harmless.)
    left = [p for p in (tmp_path / "o").rglob("*") if not p.is_dir()]
    assert [p.name for p in left] in ([], ["index.tsv"]), left
    assert all(p.read_text() == "name\tstatus\treason\n" for p in left)
