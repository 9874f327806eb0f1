"""Datasets, validation report, the fine-tuning loop (short runs on generated data), resume, ML-Decoder, DDP."""

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from carnet_core import CarNetError, load_model, predict
from carnet_core.datacheck import validate_splits
from carnet_core.datasets import open_dataset, parse_car_name, read_cifar100, read_compcars, read_stanford_cars
from carnet_core.evaluate import evaluate, metrics_from_probabilities
from carnet_core.train import TrainConfig, Trainer, fine_tune

from conftest import COLOURS, FAST, ROOT, SHARED, colour_image, need

# --- readers -------------------------------------------------------------------------------------------------

def test_image_folder_split_is_stratified_and_seeded(colour_folder):
    a, b = open_dataset(colour_folder), open_dataset(colour_folder)
    assert a.kind == "image_folder" and a.class_names == ("blue", "green", "red")
    assert len(a.train) == 54 and len(a.val) == 18
    assert a.val.class_counts() == {"blue": 6, "green": 6, "red": 6}
    assert [p for p, _ in a.val.items] == [p for p, _ in b.val.items]
    image, label = a.train[0]
    assert image.mode == "RGB" and label in (0, 1, 2)


def test_macos_metadata_files_beside_the_photos_are_not_images(colour_folder, tmp_path):
    """A dataset copied from a Mac to a USB stick has a ``._name.png`` of metadata beside each photo (AppleDouble):
    each was listed as an image and reported unreadable ("unreadable files: 72")."""
    import shutil

    data = tmp_path / "colours"
    shutil.copytree(colour_folder, data)
    for photo in list(data.glob("*/*.png")):
        (photo.parent / f"._{photo.name}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    splits = open_dataset(data)
    assert len(splits.train) + len(splits.val) == 72
    assert validate_splits(splits).unreadable == []


def test_a_class_whose_images_are_one_folder_too_deep_is_refused(colour_folder, tmp_path):
    """blue/2019/*.png: class folders are read one level deep, so "blue" was an empty class — a model was
    fine-tuned without one blue image (validate-data: "classes with too few images: 1"). It is refused, saying why
    and what to do, for the readers and Compare alike; a folder of datasets is still named as one."""
    import shutil

    from carnet_core.folders import read_labelled_folder

    data = tmp_path / "colours"
    shutil.copytree(colour_folder, data)
    (data / "blue" / "2019").mkdir()
    for photo in list((data / "blue").glob("*.png")):
        photo.rename(data / "blue" / "2019" / photo.name)
    expected = f"{data / 'blue'} holds no images itself but 24 in its sub-folders (e.g. 2019/00.png); a class " \
               "folder is read one level deep: move them up into blue/"
    for read in (open_dataset, read_labelled_folder):
        with pytest.raises(CarNetError) as refused:
            read(data)
        assert str(refused.value) == expected
    with pytest.raises(CarNetError, match="holds datasets, not class folders: choose one of them \\(colours\\)"):
        open_dataset(tmp_path)


def test_a_train_folder_alone_is_split_here(colour_folder, tmp_path):
    """data/train/<class>/ with no val/ was read as one class, "train", holding no images, and refused; it is split
    here as class folders are (the same seeded split), and Compare and the pickers treat it as one dataset."""
    import shutil

    from carnet_core.datasets import is_one_dataset, labelled_folder

    shutil.copytree(colour_folder, tmp_path / "data" / "train")
    splits, plain = open_dataset(tmp_path / "data"), open_dataset(colour_folder)
    assert splits.class_names == ("blue", "green", "red") and splits.train.name == "data/train"
    assert [p.name for p, _ in splits.val.items] == [p.name for p, _ in plain.val.items]
    assert splits.notes == ["only train/: stratified split, 25% to val, seed 0"]
    assert is_one_dataset(tmp_path / "data") and labelled_folder(tmp_path / "data") == tmp_path / "data" / "train"


def test_image_folder_errors(tmp_path):
    with pytest.raises(CarNetError, match="no such folder"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "cars.zip").write_bytes(b"PK\x05\x06" + bytes(18))  # a dataset as the Fine-tune page takes it
    with pytest.raises(CarNetError, match="cars.zip is a zip archive: extract it and give the folder"):
        open_dataset(tmp_path / "cars.zip")  # it said "no such folder", of a file that is there
    (tmp_path / "car.jpg").write_bytes(b"jpeg")
    with pytest.raises(CarNetError, match=r"car.jpg is a file, not a dataset folder: expected .*car.jpg/<class name>/"):
        open_dataset(tmp_path / "car.jpg")
    from carnet_core.folders import read_labelled_folder

    with pytest.raises(CarNetError, match="cars.zip is a zip archive"):
        read_labelled_folder(tmp_path / "cars.zip")  # Compare's folders too
    (tmp_path / "empty").mkdir()
    with pytest.raises(CarNetError, match=r"empty has no class sub-folders: expected "
                                          r".*empty/<class name>/<images> or "):
        open_dataset(tmp_path / "empty")
    colour_image((200, 0, 0), 0).save(tmp_path / "empty" / "photo.png")  # photos without labels (a zip of them, say)
    with pytest.raises(CarNetError, match=r"empty holds 1 image but no class sub-folders, so it has no label: "
                                          r"put each class's images in a folder named after it \(.*\). To classify"):
        open_dataset(tmp_path / "empty")


def _save_mat(path, **arrays):
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), arrays)


def test_stanford_cars_devkit_layout(tmp_path):
    root = tmp_path / "stanford_cars"
    names = np.array(["AM General Hummer SUV 2000", "Aston Martin Virage Coupe 2012"], dtype=object)
    _save_mat(root / "devkit" / "cars_meta.mat", class_names=names)
    dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    for split, mat in (("train", root / "devkit" / "cars_train_annos.mat"), ("test", root / "cars_test_annos_withlabels.mat")):
        annos = np.zeros((1, 2), dtype=dtype)
        for i in range(2):
            fname = f"{split}{i:05d}.jpg"
            (root / f"cars_{split}").mkdir(parents=True, exist_ok=True)
            colour_image((100, 100, 100), i).save(root / f"cars_{split}" / fname)
            annos[0, i] = (1, 1, 10, 10, i + 1, fname)
        _save_mat(mat, annotations=annos)
    splits = open_dataset(tmp_path)
    assert splits.kind == "stanford_cars" and splits.class_names == tuple(names)
    assert [(p.name, y) for p, y in splits.train.items] == [("train00000.jpg", 0), ("train00001.jpg", 1)]
    assert splits.val.hierarchy["Aston Martin Virage Coupe 2012"]["make"] == "Aston Martin"
    _save_mat(root / "cars_test_annos_withlabels.mat", annotations=np.array([[(1, 1, 10, 10, 7, "test00000.jpg")]],
                                                                             dtype=dtype))
    with pytest.raises(CarNetError, match="class 7 of test00000.jpg is not one of the 2 classes"):
        read_stanford_cars(tmp_path)  # an index out of the meta's range (it was accepted: label 6 of 2 classes)
    _save_mat(root / "cars_test_annos_withlabels.mat", labels=np.zeros(3))  # another .mat (it was a KeyError)
    with pytest.raises(CarNetError, match=r"cars_test_annos_withlabels.mat: no annotations in it \(it holds labels\)"):
        read_stanford_cars(tmp_path)
    (root / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(CarNetError, match="cars_test_annos_withlabels.mat"):
        read_stanford_cars(tmp_path)


def test_parse_car_name():
    assert parse_car_name("BMW M6 Convertible 2010") == {"make": "BMW", "model": "BMW M6 Convertible",
                                                         "year": "BMW M6 Convertible 2010"}
    assert parse_car_name("pickup") is None


def test_compcars_layout_at_three_levels(tmp_path):
    data = tmp_path / "data"
    _save_mat(data / "misc" / "make_model_name.mat", make_names=np.array(["Audi", "BMW"], dtype=object),
              model_names=np.array(["A4", "A6", "X5"], dtype=object))
    for make, model, year in ((1, 1, "2010"), (1, 1, "2011"), (1, 2, "2012"), (2, 3, "2013")):
        folder = data / "image" / str(make) / str(model) / year
        folder.mkdir(parents=True)
        for i in range(4):
            colour_image((90, 90, 90), i).save(folder / f"{i}.jpg")
    assert read_compcars(tmp_path, "make").class_names == ("Audi", "BMW")
    assert read_compcars(tmp_path, "model").class_names == ("Audi A4", "Audi A6", "BMW X5")
    year = read_compcars(tmp_path, "year")
    assert len(year.class_names) == 4 and year.train.hierarchy["Audi A4 2011"]["make"] == "Audi"
    assert len(year.train) + len(year.val) == 16
    for stray in ("9/1/2014", "audi/1/2014"):  # a make id not in the .mat, a folder not named by id: were tracebacks
        (data / "image" / stray).mkdir(parents=True)
        colour_image((90, 90, 90), 0).save(data / "image" / stray / "0.jpg")
        with pytest.raises(CarNetError, match=f"{stray}/0.jpg: CompCars images go in image/<make id>/<model id>"):
            read_compcars(tmp_path)
        shutil.rmtree(data / "image" / stray.split("/")[0])
    (data / "misc" / "make_model_name.mat").unlink()
    with pytest.raises(CarNetError, match="make_model_name.mat"):
        read_compcars(tmp_path)


def test_cifar100_python_files_and_a_malicious_one(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": ["x"] * 20}, f)
    for split, n in (("train", 10), ("test", 4)):
        with open(base / split, "wb") as f:
            pickle.dump({"data": np.arange(n * 3072, dtype=np.int64).astype(np.uint8).reshape(n, 3072),
                         "fine_labels": list(range(n)), "coarse_labels": [0] * n}, f)
    splits = open_dataset(tmp_path)
    assert splits.kind == "cifar100" and len(splits.train) == 10 and len(splits.val) == 4
    assert splits.train.load(3).size == (32, 32) and splits.train.items[3][1] == 3

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(base / "train", "wb") as f:
        pickle.dump({"data": Evil()}, f)
    with pytest.raises(CarNetError, match="refused"):
        read_cifar100(tmp_path)
    (tmp_path / "cars").mkdir()  # CIFAR-100 chosen for another folder: it said to put the files in its parent
    with pytest.raises(CarNetError, match=rf"missing .*meta: extract cifar-100-python.tar.gz into {tmp_path / 'cars'} "
                                          r"\(it makes cifar-100-python/ with train, test and meta\)"):
        open_dataset(tmp_path / "cars", "cifar100")


def test_duplicates_across_splits_are_found(tmp_path):
    for s, split in enumerate(("train", "val")):
        for k, (c, rgb) in enumerate(COLOURS.items()):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(6):
                colour_image(rgb, 1000 * s + 100 * k + i, size=64).save(tmp_path / split / c / f"{i}.png")
    report = validate_splits(open_dataset(tmp_path))
    assert report.duplicates == []
    leak = tmp_path / "train" / "red" / "3.png"
    Image.open(leak).save(tmp_path / "val" / "red" / "leaked.png")  # exact copy
    Image.open(leak).resize((96, 96)).save(tmp_path / "val" / "blue" / "leaked_resized.jpg", quality=90)  # near copy
    (tmp_path / "val" / "green" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    report = validate_splits(open_dataset(tmp_path), min_per_class=7)
    found = {(Path(a).name, Path(b).name) for a, b, _ in report.duplicates}
    assert found == {("3.png", "leaked.png"), ("3.png", "leaked_resized.jpg")}
    assert [Path(p).name for p, _ in report.unreadable] == ["broken.jpg"]
    assert sorted(report.small_classes) == ["blue", "green", "red"]  # 6 < 7 train images


def test_one_class_is_no_fine_tune(colour_folder, tmp_path):
    """A folder of one class trained to "100 % top-1" after an epoch (a softmax over one logit is always right) and
    wrote a checkpoint that had learnt nothing. It is now refused, and the validation report says why."""
    shutil.copytree(colour_folder / "red", tmp_path / "solo" / "red")
    report = validate_splits(open_dataset(tmp_path / "solo"))
    assert not report.ok and "cannot fine-tune: only one class (red)" in report.summary()
    assert report.summary().startswith("1 class, ")
    with pytest.raises(CarNetError, match="only one class \\(red\\): a classifier learns to tell classes apart"):
        fine_tune(TrainConfig(data=str(tmp_path / "solo"), out=str(tmp_path / "run"), epochs=1, **FAST))
    assert not list((tmp_path / "run").glob("*.safetensors"))
    assert validate_splits(open_dataset(colour_folder)).untrainable is None


# --- evaluation metrics ----------------------------------------------------------------------------------------

def test_metrics_on_a_known_confusion_pattern():
    names = ["Audi A4 2010", "Audi A4 2011", "BMW X5 2012"]
    hierarchy = {"Audi A4 2010": {"make": "Audi", "model": "Audi A4", "year": "Audi A4 2010"},
                 "Audi A4 2011": {"make": "Audi", "model": "Audi A4", "year": "Audi A4 2011"},
                 "BMW X5 2012": {"make": "BMW", "model": "BMW X5", "year": "BMW X5 2012"}}
    # 4 images: A4-2010 right (p 0.9), A4-2010 → A4-2011 (p 0.6), A4-2011 right (p 0.6), X5 → A4-2010 (p 0.9)
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.3, 0.6, 0.1], [0.2, 0.6, 0.2], [0.9, 0.05, 0.05]])
    labels = torch.tensor([0, 0, 1, 2])
    m = metrics_from_probabilities(probs, labels, names, hierarchy)
    assert m["top1"] == 0.5 and m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert m["per_class"]["Audi A4 2010"]["accuracy"] == 0.5 and m["per_class"]["BMW X5 2012"]["accuracy"] == 0.0
    assert m["hierarchy"] == {"make": 0.75, "model": 0.75, "year": 0.5}
    # two bins: conf 0.6 (acc 0.5) and conf 0.9 (acc 0.5): ECE = 0.5·0.1 + 0.5·0.4
    assert m["ece"] == pytest.approx(0.25)
    assert m["top5"] == 1.0


# --- the loop ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def short_run(colour_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, fine_tune(TrainConfig(data=str(colour_folder), out=str(out), epochs=4, **FAST))


def test_short_run_lowers_the_loss_and_writes_everything(short_run, colour_folder):
    out, result = short_run
    losses = [h.train_loss for h in result.history]
    assert len(losses) == 4 and losses[-1] < losses[0] * 0.8, losses
    assert losses[0] < np.log(3)  # from uniform predictions (zero-initialised head, below) the head learns at once
    from carnet_core.train import _initial_model

    fresh = _initial_model(TrainConfig(data=str(colour_folder), **FAST), ("blue", "green", "red")).module.eval()
    assert torch.equal(fresh(torch.randn(2, 3, 64, 64)), torch.zeros(2, 3))
    assert result.best_top1 >= 0.8
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and {"top5", "lr", "images_per_s", "val_loss"} <= set(rows[0])
    assert (out / "metrics.csv").read_text().startswith("epoch,train_loss,val_loss,top1,top5,lr,images_per_s,seconds")
    assert len(list(out.glob("best-*.safetensors"))) == 2  # keep_best
    model = load_model(checkpoint=result.best_checkpoint, device="cpu")
    assert model.class_names == ("blue", "green", "red") and model.metrics["top1"] == result.best_top1
    report = evaluate(model, open_dataset(colour_folder).val)
    assert report.top1 == pytest.approx(result.best_top1)  # same val split, same numbers
    assert predict(model, [colour_image(COLOURS["red"], 999)])[0].top1 == "red"


def test_a_runs_resume_state_given_as_a_model_points_to_its_checkpoints(short_run, tmp_path):
    """last_state.pt (optimizer, schedule, progress) given as a model was taken for a plain state dict ("say which
    architecture"), and with --model asked for class names next; it now names the run's checkpoints to give."""
    out, result = short_run
    for name in (None, "efficientnet_lite0"):
        with pytest.raises(CarNetError) as caught:
            load_model(name, checkpoint=out / "last_state.pt", device="cpu")
        assert "last_state.pt is a fine-tune's resume state" in str(caught.value)
        assert str(caught.value).endswith(f"{result.best_checkpoint} or {out / 'last.safetensors'}")
    from carnet_core.jobs import best_checkpoint

    assert best_checkpoint(out) == result.best_checkpoint and best_checkpoint(tmp_path) is None
    shutil.copy(out / "last_state.pt", tmp_path / "last_state.pt")  # alone: where they would be
    with pytest.raises(CarNetError, match="give its run's checkpoint, best-\\*.safetensors or last.safetensors"):
        load_model(checkpoint=tmp_path / "last_state.pt", device="cpu")


class CrashAfter:
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, metrics):
        if metrics.epoch == self.epoch:
            raise KeyboardInterrupt("simulated crash")


def test_resume_continues_with_the_saved_optimizer_and_schedule(colour_folder, tmp_path):
    cfg = TrainConfig(data=str(colour_folder), out=str(tmp_path), epochs=3, **FAST)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, [CrashAfter(2)]).fit()
    saved = torch.load(tmp_path / "last_state.pt", weights_only=True)
    assert saved["epoch"] == 2

    class Capture:
        def on_epoch_end(self, trainer, metrics):
            self.lr = metrics.lr

    cap = Capture()
    result = Trainer(cfg, [cap]).fit()
    assert [h.epoch for h in result.history] == [1, 2, 3]
    rows = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3]
    # the cosine schedule continued: epoch 3 uses the lr the saved scheduler prescribes, not a fresh schedule's
    fresh = TrainConfig(data=str(colour_folder), out=str(tmp_path / "fresh"), epochs=3, **FAST)
    full = fine_tune(fresh)
    assert cap.lr == pytest.approx(full.history[2].lr)
    assert saved["optimizer"]["state"]  # Adam moments were saved and restored


def test_corrupt_or_foreign_state_is_refused(colour_folder, tmp_path):
    (tmp_path / "last_state.pt").write_bytes(b"garbage")
    with pytest.raises(CarNetError, match="cannot resume.*corrupt"):
        fine_tune(TrainConfig(data=str(colour_folder), out=str(tmp_path), epochs=1, **FAST))
    (tmp_path / "last_state.pt").unlink()
    fine_tune(TrainConfig(data=str(colour_folder), out=str(tmp_path), epochs=1, **FAST))
    with pytest.raises(CarNetError, match="from a run with model='efficientnet_lite0'"):
        fine_tune(TrainConfig(data=str(colour_folder), out=str(tmp_path), epochs=2,
                              pretrained=False, **{**FAST, "model": "mobilenetv2_100"}))


def test_settings_that_cannot_train_are_a_message_before_any_work(colour_folder, tmp_path):
    """These used to end in a traceback from torch, timm or Lightning (batch size 0, a negative learning rate, a
    label smoothing of 1.5, an unknown precision) or to "succeed" doing nothing useful (0 epochs; keep_best=0: no best
    checkpoint written; an EMA decay of 2: val loss 497)."""
    bad = dict(epochs=0, batch_size=0, lr=-1.0, keep_best=0, ema_decay=2.0, label_smoothing=1.5, img_size=0,
               mixup=-1.0, val_fraction=1.5, weight_decay=float("nan"), warmup_epochs=float("inf"))
    with pytest.raises(CarNetError) as caught:
        fine_tune(TrainConfig(data=str(colour_folder), out=str(tmp_path / "run"), **bad))
    for name, value in bad.items():
        assert f"{name} must be" in str(caught.value) and f"(got {value})" in str(caught.value)
    assert not (tmp_path / "run").exists()  # nothing done, nothing written
    assert TrainConfig(data="x").problems() == []  # the defaults are fine
    assert TrainConfig(data="x", epochs=2, freeze_epochs=3).problems() == ["freeze_epochs must be from 0 to epochs (2) "
                                                                           "(got 3)"]
    (tmp_path / "a-file").write_text("")  # a run folder that is a file: it read "a-file: File exists"
    assert TrainConfig(data="x", out=str(tmp_path / "a-file")).problems() == [
        f"out must be a run folder, new or one to resume, not a file (got {tmp_path / 'a-file'})"]
    with pytest.raises(CarNetError, match="cannot set up training: Precision 'fp7' is invalid"):
        fine_tune(TrainConfig(data=str(colour_folder), out=str(tmp_path / "run"), precision="fp7"))
    proc = _cli("train", str(colour_folder), "--out", str(tmp_path / "cli"), "--batch-size", "0", "--workers", "-1")
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2 and "Traceback" not in output, output[-2000:]
    assert "batch_size must be at least 1 (got 0)" in output and "workers must be at least 0 (got -1)" in output


def test_ml_decoder_head_trains_and_round_trips(colour_folder, tmp_path):
    result = fine_tune(TrainConfig(data=str(colour_folder), out=str(tmp_path), epochs=2, head="ml_decoder", **FAST))
    model = load_model(checkpoint=result.best_checkpoint, device="cpu")
    assert model.head == "ml_decoder" and type(model.module.get_classifier()).__name__ == "MLDecoder"
    x = torch.randn(2, 3, 64, 64)
    again = load_model(checkpoint=result.best_checkpoint, device="cpu")
    with torch.no_grad():
        assert torch.equal(model.module(x), again.module(x))
    from carnet_core.explain import explain

    cam = explain(model, colour_image(COLOURS["red"], 5))
    assert cam.layer == "bn2" and cam.heatmap.shape == (64, 64)


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "carnet_core", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_kill_minus_9_then_resume_loses_at_most_one_epoch(colour_folder, tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()  # what the killed process leaves in the temporary directory (timm imports W&B, whose
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # two folders are removed at exit) stays in the test's own
    args = ["train", str(colour_folder), "--out", str(tmp_path), "--epochs", "4", "--img-size", "64",
            "--batch-size", "6", "--workers", "0", "--randaugment", "none"]
    proc = _cli(*args)
    deadline = time.time() + 240
    while time.time() < deadline and not (tmp_path / "metrics.jsonl").exists():
        time.sleep(0.2)
    assert (tmp_path / "metrics.jsonl").exists(), proc.communicate()[0][-2000:] if proc.poll() is not None else ""
    os.kill(proc.pid, signal.SIGKILL)
    first = proc.communicate()[0]
    done = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert 1 <= len(done) < 4
    probe = re.search(r"linear probe: val top-1 ([\d.]+%)", first)
    assert probe, first[-2000:]
    proc = _cli(*args)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-2000:]
    assert f"resuming after epoch {done[-1]}" in output
    assert "probe init" not in output  # the resumed run keeps the killed run's head, and its probe's number:
    assert re.search(rf"best val top-1 [\d.]+% \(linear probe {re.escape(probe.group(1))}\): ", output), output[-500:]
    assert "top-5 —, lr" in output and "top-5 100" not in output  # 3 classes: 100 % by construction, not shown
    assert "Seed set to" not in output  # Lightning's log line: the seed is in the recipe, not in every run's output
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]
    from carnet_core.checkpoint import read_metadata

    assert read_metadata(tmp_path / "last.safetensors")["recipe"]["randaugment"] is None  # "--randaugment none"


def test_real_fine_tune_clearly_beats_its_own_linear_probe(tmp_path):
    """EfficientNet-Lite0 (bundled ImageNet weights) fine-tuned on the 824 real Stanford Cars train photos of
    ../shared (40 classes) at 112 px, half the size it was trained at, scored on their 274 val photos against the
    linear probe that the same run fits first (LP-FT's head on frozen features, scored on val before any epoch).

    At 112 px the frozen ImageNet features lose much (probe 55–57 % here, 74 % at 224 px), so adapting the whole
    network pays within 2 epochs: measured 60.9 % (probe 55.1 %) in fp32, 63.1 % (56.9 %) in bf16, about 50 s; the
    augmentations' random stream moves it (fp32 with 0 or 1 loader workers: 60.2 %, 59.1 %). A backbone that did not
    train stays at the probe's level (head-only epochs: 56.2 %). At 224 px two epochs only get back to about the
    probe's level (73.4 % against 74.1 %; the 10-epoch recipe, bench/recipes.py, reaches 81 %). Precision is the CPU
    default (fp32), the same work on every CPU, with or without bf16 instructions.
    """
    data = need(SHARED / "data" / "stanford_cars_40")
    result = fine_tune(TrainConfig(data=str(data), out=str(tmp_path), img_size=112, epochs=2, lr=2e-4,
                                   warmup_epochs=0.3, workers=2, keep_best=1))
    print(f"linear probe {result.probe_top1:.3f}, val top-1 per epoch: {[round(h.top1, 3) for h in result.history]}")
    assert result.probe_top1 >= 0.45  # 40 classes: chance is 0.025; the probe is a real fit
    fine_tuned = max(h.top1 for h in result.history)  # the epochs' best; result.best_top1 may be the probe's
    assert fine_tuned >= result.probe_top1 + 0.025 and result.best_top1 == fine_tuned  # 7 more of the 274 photos
    model = load_model(checkpoint=result.best_checkpoint, device="cpu")
    assert len(model.class_names) == 40 and model.data_config["input_size"] == [3, 112, 112]


def test_a_fine_tune_that_ends_below_its_probe_keeps_the_probe_as_its_best_checkpoint(colour_folder, tmp_path, capsys):
    """The probe is saved as epoch 0, a candidate for the best checkpoint: a fine-tune whose epochs all end below it
    (here wrecked by a learning rate of 0.5; in practice a short run whose first epochs dip below the probe) leaves
    the probe's weights as the run's best, not worse ones, and says so."""
    from carnet_core.cli import main
    from carnet_core.jobs import Job, best_checkpoint

    assert main(["train", str(colour_folder), "--out", str(tmp_path), "--epochs", "1", "--img-size", "64",
                 "--batch-size", "6", "--workers", "0", "--randaugment", "none", "--lr", "0.5",
                 "--warmup-epochs", "0", "--keep-best", "2"]) == 0
    out = capsys.readouterr().out
    probe = float(re.search(r"linear probe: val top-1 ([\d.]+)%", out).group(1))
    epoch1 = float(re.search(r"epoch 1: .*top-1 ([\d.]+)%", out).group(1))
    assert epoch1 < probe, out
    best = best_checkpoint(tmp_path)
    assert best.name == f"best-e000-top1-{probe:.1f}.safetensors", sorted(p.name for p in tmp_path.iterdir())
    assert f"best val top-1 {probe:.1f}% (linear probe {probe:.1f}%): {best}" in out
    assert "note: no epoch beat the linear probe, so the best checkpoint is the probe's" in out
    model = load_model(checkpoint=best, device="cpu")
    assert model.name.endswith("-probe") and model.metrics["epoch"] == 0
    assert evaluate(model, open_dataset(colour_folder).val).top1 * 100 == pytest.approx(probe, abs=0.05)  # its weights
    assert Job("x", tmp_path, {}, {}).best_top1 * 100 == pytest.approx(probe, abs=0.05)  # the Runs table's best
    from streamlit.testing.v1 import AppTest

    listed = Path(os.environ["CARNET_WEIGHTS_DIR"]) / "colours-probe.safetensors"  # where the pickers list it
    shutil.copy(best, listed)
    at = AppTest.from_file(str(ROOT / "app_pages" / "5_Models.py"), default_timeout=300).run()
    at.selectbox(key="models_pick").set_value(f"checkpoint:{listed}").run()
    assert not at.exception, at.exception
    assert any("(the linear probe: no fine-tuned epoch beat it)" in m.value for m in at.markdown)


def test_an_epoch_that_ties_the_probe_is_the_best_checkpoint(colour_folder, tmp_path):
    """On a tie the fine-tuned epoch is kept as best, not the probe (epoch 0), in the run and in its folder."""
    from carnet_core.jobs import best_checkpoint
    from carnet_core.train import EpochMetrics, _initial_model

    cfg = TrainConfig(data=str(colour_folder), out=str(tmp_path), keep_best=2, **FAST)
    trainer = Trainer(cfg)
    trainer.classifier = _initial_model(cfg, ("blue", "green", "red"))
    best = []
    for epoch, top1 in ((0, 1.0), (1, 1.0), (2, 0.9)):
        best = trainer._checkpoint(EpochMetrics(epoch, 0.1, 0.1, top1, 1.0, 1e-3, 1.0, 1.0),
                                   trainer.classifier.module, best)
    assert [(top1, epoch) for top1, epoch, _ in best] == [(1.0, 1), (1.0, 0)]
    assert best_checkpoint(tmp_path) == best[0][2] == tmp_path / "best-e001-top1-100.0.safetensors"


def test_bf16_autocast_trains_on_the_cpu_and_keeps_fp32_weights(colour_folder, tmp_path):
    """bf16 mixed precision (Lightning Fabric's "bf16-mixed", the GPU default where supported) through the same loop
    on the CPU: it learns, and the checkpoint holds the fp32 master weights, not bf16 copies."""
    from safetensors import safe_open

    result = fine_tune(TrainConfig(data=str(colour_folder), out=str(tmp_path), epochs=2, precision="bf16-mixed",
                                   **FAST))
    assert result.best_top1 >= 0.8 and result.history[-1].train_loss < result.history[0].train_loss
    with safe_open(str(result.best_checkpoint), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert "F32" in dtypes and dtypes <= {"F32", "I64"}, dtypes  # I64: BatchNorm's num_batches_tracked; no BF16


def test_two_cpu_processes_end_with_identical_weights(colour_folder, tmp_path):
    """DDP on CPU (gloo) through Lightning Fabric: the same command as for GPUs, with --devices 2."""
    proc = _cli("train", str(colour_folder), "--out", str(tmp_path), "--epochs", "1", "--img-size", "64",
                "--batch-size", "6", "--workers", "0", "--randaugment", "none", "--accelerator", "cpu",
                "--devices", "2", "--strategy", "ddp")
    output = proc.communicate(timeout=400)[0]
    assert proc.returncode == 0, output[-3000:]
    ranks = sorted((tmp_path / "rank_weights").glob("rank*.sha256"))
    assert [p.name for p in ranks] == ["rank0.sha256", "rank1.sha256"]
    assert ranks[0].read_text() == ranks[1].read_text()


def test_metrics_also_go_to_tensorboard_mlflow_and_wandb_offline(colour_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    fine_tune(TrainConfig(data=str(colour_folder), out=str(tmp_path), epochs=2,
                          loggers=("tensorboard", "mlflow", "wandb"), **FAST))
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    [top1] = list((tmp_path / "mlruns").rglob("metrics/top1"))
    steps = [int(line.split()[2]) for line in top1.read_text().splitlines()]
    assert steps == [1, 2]  # one value per epoch, stepped by epoch
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    with pytest.raises(CarNetError, match="unknown logger"):
        fine_tune(TrainConfig(data=str(colour_folder), out=str(tmp_path / "x"), epochs=1, loggers=("comet",), **FAST))


def test_precision_auto_is_bf16_or_fp16_on_gpus_and_fp32_on_cpus(monkeypatch):
    """The GPU path (no GPU in CI): Fabric gets bf16 autocast on GPUs that support it, fp16 on older ones."""
    trainer = Trainer(TrainConfig(data="x"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trainer._precision() == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert trainer._precision() == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert trainer._precision() == "16-mixed"
    assert Trainer(TrainConfig(data="x", precision="bf16-mixed"))._precision() == "bf16-mixed"


def test_head_learns_faster_when_the_probe_is_skipped(colour_folder, tmp_path, monkeypatch, capsys):
    """probe_init on, but features too large to cache: the zero-initialised head gets head_lr_scale back."""
    import carnet_core.train as T

    monkeypatch.setattr(T, "PROBE_MAX_MB", 0)
    seen = {}

    class Probe:
        def on_train_batch_end(self, trainer, epoch, step, num_steps):
            for g in trainer.optimizer.param_groups:
                seen.setdefault(g["role"], g["lr"])

    cfg = TrainConfig(data=str(colour_folder), out=str(tmp_path), epochs=1, **{**FAST, "probe_init": True,
                                                                                 "freeze_epochs": 0})
    (tmp_path / "probe.json").write_text('{"top1": 0.5, "top5": 0.9}')  # an earlier run's, in the same folder
    result = Trainer(cfg, [Probe()]).fit()
    out = capsys.readouterr().out
    assert "probe init skipped" in out and "linear probe:" not in out and result.probe_top1 is None
    assert not (tmp_path / "probe.json").exists()  # this run fitted no probe: its curves show none
    assert seen["head"] == pytest.approx(seen["backbone"] * cfg.head_lr_scale)


def test_ml_decoder_probe_fits_the_head_before_fine_tuning(colour_folder, tmp_path, capsys):
    """LP-FT with the ML-Decoder head: the probe (AdamW with warm-up on cached features) fits the decoder, which then
    fine-tunes at the backbone's LR like a fitted linear head."""
    seen = {}

    class Probe:
        def on_train_batch_end(self, trainer, epoch, step, num_steps):
            for g in trainer.optimizer.param_groups:
                seen.setdefault(g["role"], g["lr"])

    cfg = TrainConfig(data=str(colour_folder), out=str(tmp_path), epochs=1, head="ml_decoder",
                      **{**FAST, "probe_init": True, "freeze_epochs": 0, "probe_epochs": 10})
    result = Trainer(cfg, [Probe()]).fit()
    out = capsys.readouterr().out
    fitted = re.search(r"probe init: head fitted on \d+ cached feature maps .*train top-1 ([\d.]+)%", out)
    assert fitted and float(fitted.group(1)) >= 90.0
    assert seen["head"] == pytest.approx(seen["backbone"])
    # the fitted probe is scored on val before the first epoch: the baseline the fine-tune is measured against
    assert result.probe_top1 is not None and f"linear probe: val top-1 {result.probe_top1:.1%}, top-5 —" in out
    from carnet_core.jobs import Job

    assert json.loads((tmp_path / "probe.json").read_text())["top1"] == result.probe_top1  # for the page's curves
    job = Job("x", tmp_path, {}, {})
    assert job.probe_top1 == result.probe_top1
    for damaged in ("", "{", '{"top1": "high"}', '{"top1": true}', "[]", "[1]"):  # half-written or odd: no probe,
        (tmp_path / "probe.json").write_text(damaged)
        assert job.probe_top1 is None, damaged  # not a crash
