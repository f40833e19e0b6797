"""Tests of config.py: original and long flag names, boolean parsing (the published tuple bug), validation
sentences, the JSON record of a run, and the reusable flag machinery processor.py shares.
"""
from __future__ import annotations

import argparse
import json

import pytest

from config import (Config, ConfigError, add_flag, build_parser, make_parser, parse_bool, parse_config, resolve_bfm,
                    validate)


def _parse(*args: str) -> Config:
    return parse_config(list(args), check=False)


def test_original_flags_verbatim(tmp_path):
    c = _parse("-train=True", "-test=False", "--batchSize=16", f"-td={tmp_path}/a", f"-vd={tmp_path}/b",
               f"-pd={tmp_path}/c", "--numWorker=4", "--isPreRead=True", "--gpu=4", "--visibleDevice=0,1,2,3",
               "--loadModelPath=savedmodel/run/best.pth")
    assert (c.train, c.test, c.batch_size, c.num_workers, c.pre_read, c.gpus) == (True, False, 16, 4, True, 4)
    assert (c.train_dir, c.val_dir, c.predict_dir) == (f"{tmp_path}/a", f"{tmp_path}/b", f"{tmp_path}/c")
    assert c.visible_devices == "0,1,2,3" and c.load_model_path == "savedmodel/run/best.pth"


def test_long_names_match_original_names():
    long = _parse("--train=false", "--test", "--batch-size=8", "--train-dir=T", "--val-dir=V", "--predict-dir=P",
                  "--num-workers=2", "--pre-read=1", "--gpus=2", "--visible-devices=0,1", "--load-model-path=M",
                  "--model=prnet", "--encoder=faithful", "--epochs=3", "--lr=0.001", "--seed=7", "--out=O",
                  "--resume", "--gt=reannotated", "--device=cpu")
    orig = _parse("-train=False", "-test=True", "--batchSize=8", "-td=T", "-vd=V", "-pd=P", "--numWorker=2",
                  "--isPreRead=True", "--gpu=2", "--visibleDevice=0,1", "--loadModelPath=M", "--model=prnet",
                  "--encoder=faithful", "--epoch=3", "--learningRate=0.001", "--seed=7", "--out=O", "--resume=True",
                  "--gt=reannotated", "--device=cpu")
    assert long == orig
    assert long.resume == "auto" and long.model == "prnet" and long.lr == 0.001 and long.epochs == 3


@pytest.mark.parametrize("text, value", [("True", True), ("true", True), ("1", True), ("yes", True),
                                         ("False", False), ("false", False), ("0", False), ("no", False)])
def test_boolean_values(text, value):
    assert parse_bool(text) is value
    assert _parse(f"-train={text}").train is value
    assert _parse("--pre-read", text).pre_read is value          # space-separated value works too


def test_train_false_is_false_not_a_truthy_tuple():
    c = _parse("-train=False", "-test=True")
    assert c.train is False and isinstance(c.train, bool)
    assert _parse("--demo").demo is True                          # a bare boolean flag means True


def test_defaults_follow_the_paper():
    c = Config()
    assert (c.lr, c.weight_decay, c.lr_decay, c.epochs, c.batch_size, c.model, c.encoder) == \
        (1e-4, 2e-4, 0.8, 30, 16, "e2tkface", "aligned")
    assert _parse().given == ()
    assert _parse("--batchSize=4", "-td=x").given == ("batch_size", "train_dir")


@pytest.mark.parametrize("args, needle", [
    (["-train=maybe"], "'maybe' is not a boolean"),
    (["--batchSize=many"], "not a whole number"),
    (["--no-such-flag=1"], "Unknown flag"),
    (["--batchSize=-1", "--demo"], "--batchSize/--batch-size must be at least 1"),
    (["--demo", "--lr=0"], "--lr must be positive"),
    (["--demo", "--encoder=vit"], "Unknown --encoder='vit'"),
    (["--demo", "--gt=new"], "Unknown --gt='new'"),
    (["--demo", "--device=tpu"], "Unknown --device='tpu'"),
    (["--demo", "--precision=int8"], "Unknown --precision='int8'"),
    (["--demo", "--optimizer=sgd"], "Unknown --optimizer='sgd'"),
    (["--demo", "--warmup=-1"], "--warmup must be 0 or more"),
    (["--demo", "--appearance=hair,hats"], "--appearance: unknown appearance switch 'hats'"),
    (["-train=True", "--appearance=full"], "--appearance shapes the images --demo synthesises"),
    (["--demo", "--visibleDevice=a,b"], "not a comma-separated list"),
    (["-train=False"], "Nothing to do"),
    (["-td=/nonexistent/folder"], "-td/--train-dir does not exist"),
    (["-train=False", "-test=True", "-pd=/nonexistent"], "-pd/--predict-dir does not exist"),
])
def test_bad_values_raise_one_sentence(args, needle):
    with pytest.raises(ConfigError) as err:
        parse_config(args)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message and message.endswith(".")


def test_folder_and_checkpoint_checks(tmp_path):
    validate(Config(train_dir=str(tmp_path)), known_models=["e2tkface"])
    with pytest.raises(ConfigError, match="needs --loadModelPath"):
        validate(Config(train=False, test=True, predict_dir=str(tmp_path)), known_models=["e2tkface"])
    with pytest.raises(ConfigError, match="--loadModelPath does not exist"):
        validate(Config(train=False, test=True, predict_dir=str(tmp_path), load_model_path=str(tmp_path / "x.pth")),
                 known_models=["e2tkface"])
    with pytest.raises(ConfigError, match="--gt-file"):
        validate(Config(train_dir=str(tmp_path), gt="reannotated"), known_models=["e2tkface"])
    with pytest.raises(ConfigError, match="Unknown --model='resnet'"):
        validate(Config(demo=True, model="resnet"), known_models=["e2tkface", "prnet"])
    with pytest.raises(ConfigError, match="--resume without a path needs --out"):
        validate(Config(train_dir=str(tmp_path), resume="auto"), known_models=["e2tkface"])


def test_json_round_trip(tmp_path):
    c = _parse("--batchSize=4", "--model-kwargs={\"width_mult\": 0.5}", "--out=runs/x", "-vd=V", "--lr=3e-4")
    path = c.save_json(tmp_path / "run" / "config.json")
    assert json.loads(path.read_text())["batch_size"] == 4
    back = Config.load_json(path)
    assert back == c and back.model_kwargs == {"width_mult": 0.5}
    assert not list(path.parent.glob(".*tmp"))                     # atomic: no temp file left behind
    with pytest.raises(ConfigError, match="Unknown configuration keys"):
        Config.from_dict({**c.to_dict(), "bogus": 1})


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("-train", "--batchSize", "--batch-size", "-td", "--train-dir", "--numWorker", "--isPreRead",
                 "--visibleDevice", "--loadModelPath", "--model", "--encoder", "--resume", "--demo", "--gt"):
        assert flag in text
    assert "held-out" in text or "held out" in text


def test_reusable_flag_machinery():
    parser = make_parser(prog="processor.py")
    add_flag(parser, ["-f", "--full"], "full", "write meshes", kind="bool", default=False)
    add_flag(parser, ["--thread", "--threads"], "threads", "worker processes", kind=int, default=1)
    ns = vars(parser.parse_args(["-f=False", "--thread=16"]))
    assert ns == {"full": False, "threads": 16}
    assert vars(parser.parse_args(["--full"])) == {"full": True}
    assert vars(parser.parse_args([])) == {}                       # defaults suppressed: only given flags
    with pytest.raises(ConfigError, match="not a boolean"):
        parser.parse_args(["-f=perhaps"])
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bool("perhaps")


def test_resolve_bfm_falls_back_to_synthetic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_bfm("auto") == "synthetic"
    (tmp_path / "data" / "Out").mkdir(parents=True)
    (tmp_path / "data" / "Out" / "BFM.mat").write_bytes(b"")
    assert resolve_bfm("auto") == "data/Out"
    assert resolve_bfm("synthetic") == "synthetic"


def test_inference_jobs_do_not_start_the_default_training(tmp_path):
    c = _parse("-predict=photo.jpg", "--loadModelPath=m.pth", "-o=out", "--bbox=1,2,30,40")
    assert (c.train, c.predict, c.out, c.bbox) == (False, "photo.jpg", "out", "1,2,30,40")
    e = _parse("-export=onnx", "--loadModelPath=m.pth", "--output=m.onnx")
    assert (e.train, e.export_format, e.out) == (False, "onnx", "m.onnx")
    assert _parse("-predict=p", "-train=True").train is True          # explicit training still happens
    assert _parse("--exported-encoder=False").export is False


def test_precision_and_channels_last_flags():
    import model.device

    config = _parse("--demo", "--precision=bf16", "--channels-last", "--compile=True")
    assert config.precision == "bf16" and config.channels_last is True and config.compile is True
    default = _parse("--demo")
    assert default.precision == "fp32" and default.channels_last is False and default.compile is False
    from config import PRECISIONS
    assert PRECISIONS == model.device.PRECISIONS


def test_head_size_and_schedule_flags():
    import config as C
    import engine.optim
    import model.head

    assert (C.HEADS, C.INPUT_SIZES, C.LR_SCHEDULES, C.OPTIMIZERS) == (
        model.head.HEADS, model.head.INPUT_SIZES, engine.optim.SCHEDULES, engine.optim.OPTIMIZERS)
    c = _parse("-td=x", "--head=published", "--input-size=128", "--warmup=20", "--lr-schedule=cosine",
               "--augment-rotation=False", "--decay-norm-bias=False")
    assert (c.head, c.input_size, c.warmup_steps, c.lr_schedule, c.augment_rotation, c.decay_norm_bias) == \
        ("published", 128, 20, "cosine", False, False)
    d = C.Config()
    assert (d.head, d.input_size, d.warmup_steps, d.lr_schedule, d.augment_rotation) == \
        ("mean-residual", 256, 500, "exp", True)
