import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SIX


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.subprocess
def test_predict_json_on_a_real_photo_and_a_bad_file(cli_process, cli, car_photos, tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    out = cli_process("predict", str(car_photos[0]), str(bad), "--topk", "3", "--json")
    assert out.returncode == 1, out.stderr  # one input failed, the other was classified
    assert "Traceback" not in out.stderr
    data = json.loads(out.stdout)
    assert data["model"] == "efficientnet_lite0" and data["weights"]["source"] == "offline_package"
    ok, err = data["results"]
    assert len(ok["topk"]) == 3 and ok["latency_ms"] > 0 and ok["topk"][0]["probability"] > 0.1
    assert "not an image" in err["error"]
    code, out, _ = cli("predict", car_photos[0])  # a Hummer: its top-1 "half track" is a military vehicle
    assert code == 0 and "half track" in out.splitlines()[3] and "best road-vehicle class: amphibian" in out


def test_predict_says_when_the_model_sees_little_of_a_photo(cli, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (1920, 1080), (90, 90, 90)).save(tmp_path / "wide.png")
    Image.new("RGB", (40, 40), (90, 90, 90)).save(tmp_path / "tiny.png")
    Image.new("RGB", (640, 480), (90, 90, 90)).save(tmp_path / "photo.png")
    code, out, _ = cli("predict", tmp_path / "wide.png", tmp_path / "tiny.png", tmp_path / "photo.png")
    assert code == 0
    wide, tiny, photo = out.split("\n\n")[1:]
    assert "note: The model sees the middle 1080×1080 px, 56% of the photo" in wide
    assert "note: The photo is 40×40 px, enlarged 5.6×" in tiny and "note:" not in photo
    code, out, _ = cli("predict", tmp_path / "photo.png", tmp_path / "wide.png", "--json", "--top-k", "2")
    photo, wide = json.loads(out)["results"]
    assert len(photo["topk"]) == 2  # --top-k, as it is often spelled, is --topk (timm's inference.py)
    assert photo["note"] is None and wide["note"].startswith("The model sees the middle 1080×1080 px")


def test_predict_takes_a_path_the_shell_split_at_its_spaces(cli, tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("CARNET_ENGINE", "torch")
    folder = tmp_path / "AM General Hummer SUV 2000"  # a Stanford Cars class folder, typed without quotes
    folder.mkdir()
    Image.new("RGB", (64, 48), (90, 90, 90)).save(folder / "a b.png")
    Image.new("RGB", (64, 48), (90, 90, 90)).save(tmp_path / "plain.png")
    split = [*str(folder).split(" "), tmp_path / "plain.png", *str(tmp_path / "no such photo.jpg").split(" ")]
    code, out, err = cli("predict", *split, "--json")
    results = json.loads(out)["results"]
    assert [r["image"] for r in results] == [str(folder / "a b.png"), str(tmp_path / "plain.png"),
                                             str(tmp_path / "no"), "such", "photo.jpg"]
    assert all(len(r["topk"]) == 5 for r in results[:2]) and "no such file" in results[2]["error"]
    assert code == 1 and f"read as one path, {str(folder)!r}: put quotes around a path with spaces" in err
    # (the folder's photos were 5 "no such file" errors: AM, General, …); so too for every command's paths
    code, out, err = cli("validate-data", *str(folder).split(" "))
    assert "read as one path" in err and "unrecognized arguments" not in err and str(folder) in out + err
    code, out, err = cli("predict", "x" * 5000, "--json")  # a name too long for the system: said
    assert code == 2 and err.endswith("File name too long\n")


def test_missing_weights_is_a_message_not_a_traceback(cli, tmp_path, capsys):
    code, _, err = cli("predict", "x.jpg", "--model", "resnet50")
    assert code == 2
    assert err.startswith("error: No ImageNet weights found for resnet50") and "Traceback" not in err
    code, _, err = cli("predict", "x.jpg", "--model", "nope")
    assert code == 2 and "unknown model 'nope'" in err


def test_models_lists_the_registry(cli, capsys):
    code, out, _ = cli("models", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["efficientnet_lite0"]["weights"].startswith("bundled package")
    assert rows["resnet50"]["weights"].startswith("MISSING")


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.subprocess
def test_explain_writes_an_overlay_and_rejects_unknown_classes(cli_process, cli, car_photos, tmp_path, capsys):
    out_png = tmp_path / "o" / "overlay.png"
    out = cli_process("explain", str(car_photos[0]), "--method", "gradcam", "--out", str(out_png), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    from PIL import Image

    assert Image.open(out_png).size == (224, 224) and data["layer"] == "bn2" and data["class"]
    code, _, err = cli("explain", car_photos[0], "--class", "sport car", "--out", out_png)
    assert code == 2 and "did you mean 'sports car'" in err
    code, out, err = cli("explain", car_photos[0], "--aug-smooth", "--eigen-smooth", "--out", out_png)
    assert code == 2 and "does not go with eigen smoothing" in err
    code, out, err = cli("explain", car_photos[0], "--out", out_png)  # words, as the Explain page's
    first, faithfulness = out.splitlines()
    assert code == 0 and first.startswith("gradcam on efficientnet_lite0/bn2: ") and first.endswith(f"→ {out_png}")
    assert faithfulness.startswith("faithfulness: keeping only the highlighted region ") and "**" not in faithfulness
    assert f"{data['faithfulness'] * 100:+.1f} points): " in faithfulness
    code, out, err = cli("explain", car_photos[0], "--aug-smooth", "--out", out_png, "--json")
    assert code == 0, err
    smoothed = json.loads(out)
    assert smoothed["aug_smooth"] and not smoothed["eigen_smooth"] and smoothed["class"] == data["class"]
    assert smoothed["probability"] == pytest.approx(data["probability"], abs=1e-5)
    # an --out that is not an image file is said before any work (".txt" was PIL's traceback after the CAM)
    code, _, err = cli("explain", car_photos[0], "--out", tmp_path / "overlay.txt")
    assert code == 2 and err.startswith("error: --out") and "give a file name ending in .png, .jpg or .webp" in err
    code, _, err = cli("explain", car_photos[0], "--out", tmp_path)
    assert code == 2 and f"is a folder; give the image file to write, e.g. {tmp_path / 'overlay.png'}" in err
    assert not (tmp_path / "overlay.txt").exists() and "Traceback" not in err
    code, _, err = cli("explain", car_photos[0], "--out", tmp_path / "overlay.heic")  # read, not written
    assert code == 2 and "give a file name ending in .png, .jpg or .webp" in err and "Traceback" not in err


@pytest.mark.slow
def test_evaluate_csv_that_cannot_be_written_loses_no_numbers(cli, colour_folder, tmp_path, capsys, monkeypatch):
    """The per-class CSV used to be written before anything was printed: a path that could not be written threw the
    finished evaluation away. A missing folder, or a folder given as the file, is now said before evaluating; any
    other failure after the numbers."""
    mapping = tmp_path / "colours.json"
    mapping.write_text(json.dumps({"red": ["fire engine"], "green": ["golf ball"], "blue": ["jellyfish"]}))
    evaluate = ["evaluate", "efficientnet_lite0", str(colour_folder), "--mapping", str(mapping)]
    code, _, err = cli(*evaluate, "--csv", tmp_path / "no" / "t.csv")
    assert code == 2 and "no folder" in err and str(tmp_path / "no") in err
    code, out, err = cli(*evaluate, "--json", "--csv", tmp_path)  # a folder: said before the work
    assert code == 2 and f"is a folder; give the file to write the per-class table in, e.g. " \
                         f"{tmp_path / 'per_class.csv'}" in err and not out
    import carnet_core.cli.commands

    with monkeypatch.context() as patch:  # a disk that refuses the file
        patch.setattr(carnet_core.cli.commands, "write_csv", lambda *a: (_ for _ in ()).throw(PermissionError(13, "denied")))
        code, out, err = cli(*evaluate, "--json", "--csv", tmp_path / "t.csv")
    assert code == 2 and "denied" in err
    assert json.loads(out)["num_images"] == 72  # the numbers came out first: every image (the folder has no split)
    code, out, _ = cli(*evaluate, "--csv", tmp_path / "per_class.csv")
    report = json.loads(cli(*evaluate, "--json")[1])
    assert code == 0 and f"macro F1 {report['macro_f1']:.3f}" in out
    assert f"{colour_folder.name}/all: scored 72 of the 72 images found (all of them)" in out
    val = json.loads(cli(*evaluate, "--json", "--split", "val")[1])
    assert (val["num_images"], val["images_found"], val["split"]) == (18, 72, f"{colour_folder.name}/val")
    with open(tmp_path / "per_class.csv", newline="") as f:
        rows = {r["class"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"red", "green", "blue"} and list(rows["red"])[:4] == ["class", "precision", "recall", "F1"]
    assert float(rows["red"]["F1"]) == pytest.approx(report["class_scores"]["red"]["f1"])


def test_a_member_that_is_a_folder_is_named_as_one(tmp_path, monkeypatch):
    import pytest

    from carnet_core import CarNetError, load_model
    from carnet_core.cli.inputs import load_member
    from carnet_core.errors import CheckpointError
    from carnet_core.models.checkpoints import read_state_dict

    (tmp_path / "last.safetensors").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(CarNetError, match="is a folder, not a checkpoint file or a model name; it holds "
                                          "last.safetensors$"):
        load_member(str(tmp_path), use_hub=False)  # a fine-tune's run folder instead of a checkpoint in it
    for load in (lambda: load_model("efficientnet_lite0", checkpoint=tmp_path), lambda: read_state_dict(tmp_path)):
        with pytest.raises(CheckpointError, match="is a folder, not a weights file; it holds last.safetensors$"):
            load()  # the library says it too (it said "no such file")
    with pytest.raises(CarNetError, match="no such checkpoint file"):
        load_member(str(tmp_path / "best.pt"), use_hub=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "efficientnet_lite0").mkdir()  # a folder that shares a registered name does not hide the model
    assert load_member("efficientnet_lite0", use_hub=False).name == "efficientnet_lite0"


@pytest.mark.shared
def test_predict_classifies_every_image_under_a_folder(cli, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.setenv("CARNET_ENGINE", "torch")  # which engine is not the point here: no export and timing first

    from conftest import CARS_VAL, need

    data = tmp_path / "cars"
    classes = sorted(p for p in need(CARS_VAL).iterdir() if p.is_dir())[:2]
    for c in classes:
        (data / c.name).mkdir(parents=True)
        for p in sorted(c.glob("*.jpg"))[:2]:
            shutil.copy(p, data / c.name / p.name)
    photos = sorted(str(p) for p in data.glob("*/*.jpg"))
    (data / "README.txt").write_text("not a photo")  # skipped: not an image file
    (data / ".thumbs").mkdir()
    shutil.copy(next(data.rglob("*.jpg")), data / ".thumbs" / "x.jpg")  # hidden: skipped
    (tmp_path / "empty").mkdir()
    code, out, err = cli("predict", data, tmp_path / "empty", "--json", "--csv", tmp_path / "predictions.csv")
    assert code == 1 and "1 of 5 images could not be read" in err
    results = json.loads(out)["results"]
    assert [r["image"] for r in results[:4]] == photos  # every class folder, in order
    assert all(len(r["topk"]) == 5 for r in results[:4])
    assert "a folder with no image files" in results[4]["error"]

    import csv

    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))  # one row per image, as timm's inference script writes them
    assert [r["image"] for r in rows] == photos + [str(tmp_path / "empty")]
    assert [r["class_1"] for r in rows[:4]] == [r["topk"][0]["class"] for r in results[:4]]
    assert float(rows[0]["probability_5"]) == results[0]["topk"][4]["probability"] and rows[4]["error"]
    code, out, err = cli("predict", data, "--csv", tmp_path / "nowhere" / "p.csv")
    assert code == 2 and "no folder" in err and "model " not in out  # said before any work
    code, out, err = cli("predict", data, "--csv", tmp_path)
    assert code == 2 and "is a folder; give the file to write the predictions in" in err and "model " not in out


def test_a_folder_of_datasets_is_named_as_such(cli, colour_folder, tmp_path, capsys):
    """A data root given where one dataset goes (`evaluate`, `validate-data`, `train` on data/ that holds
    stanford_cars_40/ and tiny_vehicles_6/) said "the class folders hold no images"; it now names the datasets."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(colour_folder, data / "colours")
    (data / "not_a_dataset").mkdir()
    expected = f"{data} holds datasets, not class folders: choose one of them (colours)"
    for args in (("validate-data", data), ("evaluate", "efficientnet_lite0", data), ("train", data, "--epochs", "1")):
        code, out, err = cli(*args)
        assert code == 2 and expected in err, (args, err)


def test_options_are_not_abbreviated(colour_folder, capsys):
    """`train --data DIR` (timm's train.py habit: `--data-dir`) was taken as an abbreviation of `--dataset-kind`:
    "invalid choice: 'DIR' (choose from 'auto', 'image_folder', ...)". Now an unknown option is named as such."""
    from carnet_core.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", str(colour_folder), "--epochs", "1"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "unrecognized arguments: --data" in err and "dataset-kind" not in err


def test_train_help_gives_the_recipe_defaults(capsys):
    """`train --help` listed most options with no default (argparse's are None so that TrainConfig fills them in);
    it now says TrainConfig's, as timm's train.py does."""
    from carnet_core.cli import main
    from carnet_core.training.config import TrainConfig

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    cfg = TrainConfig(data="x")
    assert exit_.value.code == 0
    for expected in (f"--epochs EPOCHS default {cfg.epochs}", f"--batch-size BATCH_SIZE default {cfg.batch_size}",
                     f"the schedule's peak (default {cfg.lr})", f"(default {cfg.randaugment})",
                     f"--model MODEL registry name (default {cfg.model})"):
        assert expected in text, expected
    assert "--no-resume start again" in text and "(default True)" not in text  # flags say what they do, not a default


def test_every_command_names_its_positional_arguments_alike():
    """`evaluate -h` read "usage: … checkpoint data" beside export's "CHECKPOINT" and compare's "folder": each
    command's positional arguments are now upper-case words, each with a help line."""
    from carnet_core.cli.parser import build_parser

    commands = next(a for a in build_parser()._actions if a.choices and "train" in a.choices).choices
    named = {name: [(a.metavar or a.dest, a.help) for a in sub._actions if not a.option_strings]
             for name, sub in commands.items()}
    assert named["evaluate"][0][0] == "CHECKPOINT" and named["compare"][0][0] == "FOLDER"
    assert named["export"] == [("CHECKPOINT", "checkpoint or weights file, or a registry model name")]
    for name, positionals in named.items():
        for metavar, help_ in positionals:
            assert metavar.isupper() and help_, (name, metavar)


@pytest.mark.slow
def test_a_checkpoint_is_taken_as_predict_takes_it_by_every_command(cli, colour_folder, tmp_path, capsys):
    """predict and explain take `--checkpoint FILE`; evaluate, export and engines took it only as their first argument,
    so `evaluate --checkpoint FILE DATA` was "unrecognized arguments". Both spellings now work, alike; neither or both
    is a message. train's `--dataset-kind` is also `--kind`, as evaluate and validate-data spell it, and back."""
    from carnet_core.cli.parser import build_parser

    mapping = tmp_path / "colours.json"
    mapping.write_text(json.dumps({"red": ["fire engine"], "green": ["golf ball"], "blue": ["jellyfish"]}))
    common = [colour_folder, "--mapping", mapping, "--json"]
    code, out, err = cli("evaluate", "--checkpoint", "efficientnet_lite0", *common)
    assert code == 0, err
    as_option = json.loads(out)
    code, out, _ = cli("evaluate", "efficientnet_lite0", *common)
    assert code == 0 and json.loads(out)["top1"] == as_option["top1"] and as_option["num_images"] == 72  # all: no split
    for command in (["evaluate", colour_folder], ["export"], ["engines"]):
        code, out, err = cli(*command)
        assert code == 2 and "no model given" in err and "--checkpoint FILE" in err and not out, (command, err)
    code, _, err = cli("export", "mobilenetv2_100", "--checkpoint", "resnet50", "--out", tmp_path / "m.onnx")
    assert code == 2 and "two checkpoints given (mobilenetv2_100 and --checkpoint resnet50)" in err
    assert not (tmp_path / "m.onnx").exists()
    parse = build_parser().parse_args
    assert parse(["train", "d", "--kind", "cifar100"]).dataset_kind == "cifar100"
    assert parse(["train", "d", "--dataset-kind", "cifar100"]).dataset_kind == "cifar100"
    assert parse(["evaluate", "m", "d", "--dataset-kind", "cifar100"]).kind == "cifar100"
    assert parse(["validate-data", "d", "--dataset-kind", "cifar100"]).kind == "cifar100"


@pytest.mark.slow
@pytest.mark.subprocess
def test_output_piped_into_a_reader_that_stops_is_not_an_error():
    """`python -m carnet_core models | head -1`: the reader goes before the output is written. That printed
    "error: Broken pipe" and exited 2, as if CarNet had failed; it now stops quietly with 141, as Unix tools do."""
    proc = subprocess.Popen([sys.executable, "-m", "carnet_core", "models"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader has gone before anything was written
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == "", err


@pytest.mark.shared
def test_a_weights_file_of_its_own_classes_is_named_by_classes_and_exported_as_a_carnet_checkpoint(six_class_mobilenet, cli, 
        car_photos, tmp_path, capsys, monkeypatch):
    """A six-class MobileNetV2 trained elsewhere (real ImageNet weights cut down to six car classes, a plain state
    dict): predict and evaluate take its classes with --classes; export --format safetensors makes a CarNet
    checkpoint that the app lists ★ from the weights folder and that classifies the same."""
    import shutil

    import torch

    from carnet_core.models.catalog import list_checkpoints

    monkeypatch.setenv("CARNET_ENGINE", "torch")
    ordered = sorted(SIX)
    state, _ = six_class_mobilenet(ordered)
    torch.save(state, tmp_path / "model.pth")
    data = tmp_path / "cars6"
    for split in ("train", "val"):
        for i, name in enumerate(ordered):
            (data / split / name).mkdir(parents=True)
            shutil.copy(car_photos[i * 7], data / split / name / "a.jpg")
    plain = ["--checkpoint", tmp_path / "model.pth", "--model", "mobilenetv2_100"]

    code, out, err = cli("predict", car_photos[0], *plain)
    assert code == 2 and "trained on 6 classes of its own" in err and "--classes" in err
    code, out, err = cli("predict", car_photos[0], *plain, "--classes", data, "--json")
    assert code == 0, err
    predicted = json.loads(out)["results"][0]["topk"]
    assert {c["class"] for c in predicted} <= set(SIX) and len(predicted) == 5
    code, out, err = cli("predict", car_photos[0], "--classes", data)
    assert code == 2 and "--classes names the classes of a --checkpoint file" in err

    from conftest import MOBILENET_TIMM

    from carnet_core import load_model
    from carnet_core.evaluation.compare import compare_on_folder

    own = load_model("mobilenetv2_100", checkpoint=tmp_path / "model.pth", class_names=data, device="cpu")
    imagenet = load_model("mobilenetv2_100", checkpoint=MOBILENET_TIMM, device="cpu")
    report = compare_on_folder([imagenet, own], data)  # the same architecture, two models: named apart
    assert report.members == ["mobilenetv2_100", "mobilenetv2_100-cars6"] and report.num_images == 6
    code, out, err = cli("evaluate", tmp_path / "model.pth", data, "--model", "mobilenetv2_100",
                              "--classes", data, "--json")
    assert code == 0, err
    assert json.loads(out)["num_images"] == 6

    weights = tmp_path / "weights"
    monkeypatch.setenv("CARNET_WEIGHTS_DIR", str(weights))
    code, out, err = cli("export", tmp_path / "model.pth", "--model", "mobilenetv2_100", "--classes",
                              data, "--format", "safetensors", "--out", weights / "cars6.safetensors")
    assert code == 0, err
    assert "6 classes, label set cars6" in out and "max probability difference: 0.00e+00" in out
    [entry] = list_checkpoints()
    assert entry.class_names == tuple(ordered) and entry.label_set == "cars6" and entry.arch == "mobilenetv2_100"
    assert entry.name == "mobilenetv2_100-cars6"  # not the ImageNet model's name
    code, out, _ = cli("models")  # listed where the registry is, with the path the commands take
    assert code == 0 and f"★ {entry.title}\n  {weights / 'cars6.safetensors'}\n" in out.split("fine-tuned checkpoints")[1]
    listed = {r["name"]: r for r in json.loads(cli("models", "--json")[1])}
    assert listed["mobilenetv2_100-cars6"]["kind"] == "checkpoint" and listed["mobilenetv2_100"]["kind"] == "registry"
    assert listed["mobilenetv2_100-cars6"]["path"] == str(weights / "cars6.safetensors")
    code, _, err = cli("predict", car_photos[0], "--model", "mobilenetv2_100-cars6")  # its name, as listed
    assert code == 2 and err.startswith("error: unknown model 'mobilenetv2_100-cars6'") and err.rstrip().endswith(
        f"is a fine-tuned checkpoint: give its path instead (with --checkpoint for predict and explain): "
        f"{weights / 'cars6.safetensors'}")
    code, out, err = cli("predict", car_photos[0], "--checkpoint", weights / "cars6.safetensors",
                              "--json")
    assert code == 0, err
    assert json.loads(out)["weights"]["detail"].startswith(f"made from model.pth: loaded by name; class names from {data}")
    again = json.loads(out)["results"][0]["topk"]
    assert [c["class"] for c in again] == [c["class"] for c in predicted]
    assert [c["probability"] for c in again] == pytest.approx([c["probability"] for c in predicted], abs=1e-6)
    torch.save({"arch": "mobilenetv2_100", "state_dict": state}, tmp_path / "named.pth")  # names its architecture
    code, out, err = cli("compare", data, "--models", tmp_path / "named.pth")
    assert code == 2 and "Compare reads class names from CarNet checkpoints" in err and "--format safetensors" in err
    code, out, err = cli("compare", data, "--models", f"{weights / 'cars6.safetensors'},efficientnet_lite0",
                              "--json")  # the folder's classes are ImageNet's: Lite0 is scored on them as they are
    assert code == 0, err
    assert json.loads(out)["num_images"] == 6
    code, out, err = cli("evaluate", "efficientnet_lite0", data, "--json")  # "Jeep" is ImageNet's "jeep"
    assert code == 0, err
    assert json.loads(out)["num_images"] == 6
    code, out, err = cli("export", tmp_path / "model.pth", "--model", "mobilenetv2_100", "--classes",
                              data, "--format", "safetensors", "--out", tmp_path / "x.pth")
    assert code == 2 and "a CarNet checkpoint is a .safetensors file" in err
    code, out, err = cli("export", "efficientnet_lite0", "--out", tmp_path / "lite0.txt")
    assert code == 2 and "an ONNX export is a .onnx file" in err and not (tmp_path / "lite0.txt").exists()


def test_predict_gives_every_file_a_result_or_its_reason(cli, tmp_path):
    """One bad input among good ones: a 664-byte 200000×1 PNG (killed the process by memory), a named pipe (hung),
    /proc/self/mem (an I/O error that lost the other results). Each now has its reason; the photos their classes."""
    import os

    from PIL import Image

    Image.new("RGB", (320, 240), (200, 30, 30)).save(tmp_path / "a.jpg")
    Image.new("L", (200_000, 1)).save(tmp_path / "wide.png")
    os.mkfifo(tmp_path / "pipe.jpg")
    Image.new("RGB", (240, 320), (30, 30, 200)).save(tmp_path / "b.webp")
    code, out, err = cli("predict", tmp_path / "a.jpg", "/proc/self/mem", tmp_path / "wide.png", tmp_path / "pipe.jpg",
                         tmp_path / "b.webp", "--json", "--no-hub")
    assert code == 1 and "Traceback" not in err
    results = {Path(r["image"]).name: r for r in json.loads(out)["results"]}
    assert set(results) == {"a.jpg", "mem", "wide.png", "pipe.jpg", "b.webp"}
    assert results["a.jpg"]["topk"] and results["b.webp"]["topk"]
    assert "cannot read the file" in results["mem"]["error"] and "200,000:1" in results["wide.png"]["error"]
    assert "not a regular file" in results["pipe.jpg"]["error"]
