import json
import os
import pickle
import shutil
import warnings

import pytest
import torch
from conftest import MOBILENET_TIMM, MOBILENET_TV, SIX, need
from safetensors.torch import save_file

from carnet_core import CheckpointError, load_model
from carnet_core.inference.predict import predict
from carnet_core.models.checkpoints import read_metadata, read_state_dict, save_checkpoint


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    model = load_model("mobilenetv2_100", weights="random", device="cpu")
    path = model.save(tmp_path / "mnv2.safetensors", metrics={"top1": 0.5})
    meta = read_metadata(path)
    assert meta["arch"] == "mobilenetv2_100" and len(meta["class_names"]) == 1000
    assert meta["data_config"]["mean"] == [0.485, 0.456, 0.406] and meta["metrics"] == {"top1": 0.5}
    assert meta["weights"]["source"] == "random"

    restored = load_model(checkpoint=path, device="cpu")  # no name: the file describes itself
    assert restored.class_names == model.class_names and restored.data_config == model.data_config
    assert restored.weights.source == "checkpoint" and restored.metrics == {"top1": 0.5}
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model.module(x), restored.module(x))


def test_hand_edited_metadata_is_refused_when_loading_not_at_the_first_photo(tmp_path):
    """Metadata that is JSON but not a CarNet description, or a data config / class list that cannot be used, gave
    AttributeError, ValueError or KeyError tracebacks (the data config ones only at the first photo); a string as
    the class list was split into letters."""
    import json

    from safetensors.torch import load_file

    from carnet_core.models.catalog import list_checkpoints
    from carnet_core.models.checkpoints import METADATA_KEY

    model = load_model("mobilenetv2_100", weights="random", device="cpu")
    good = model.save(tmp_path / "good.safetensors")
    meta, tensors = read_metadata(good), load_file(good)
    config = meta["data_config"]
    cases = {"a list": ([1, 2], "does not describe a CarNet checkpoint"),
             "a version": ({**meta, "format_version": "x"}, "format_version 'x' is not a number"),
             "no input size": ({**meta, "data_config": {k: v for k, v in config.items() if k != "input_size"}},
                               r"its data config's input_size is None, not \(3, H, W\)"),
             "one mean": ({**meta, "data_config": {**config, "mean": [0.5]}},
                          r"its data config's mean \[0.5\] is not three finite numbers"),
             "a 2-d input": ({**meta, "data_config": {**config, "input_size": [224, 224]}}, "is not \\(3, H, W\\)"),
             "letters": ({**meta, "class_names": "abc"}, "its class_names are not a list of names")}
    for name, (edited, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, path, metadata={METADATA_KEY: json.dumps(edited)})
        with pytest.raises(CheckpointError, match=message):
            load_model(checkpoint=path, device="cpu")
    # the pickers leave out what is not a CarNet checkpoint (a list here made every picker fail); the others are
    # listed, and picking one shows the message above (ui.model_or_stop)
    listed = {e.path.stem for e in list_checkpoints([tmp_path])}
    assert listed == {"good", "no input size", "one mean", "a 2-d input", "letters"}


def test_checkpoint_write_is_atomic(tmp_path):
    model = load_model("mobilenetv2_100", weights="random", device="cpu")
    model.save(tmp_path / "a.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors"]  # no temp file left behind


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    _Evil.marker = marker
    path = tmp_path / "resnet50.pth"
    with open(path, "wb") as f:
        pickle.dump({"fc.weight": _Evil()}, f)
    with pytest.raises(CheckpointError, match="refused.*arbitrary code") as refused, \
            warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        load_model("resnet50", checkpoint=path, device="cpu")
    assert not marker.exists()
    assert not [w for w in shown if "pickle protocol" in str(w.message)]  # CarNet's message, not torch's warning
    assert "weights_only" not in str(refused.value)  # torch's advice to load it unsafely is not passed on


def test_objects_and_random_bytes_are_told_apart_in_the_message(tmp_path):
    from pathlib import PurePosixPath

    with_objects = tmp_path / "train_state.pth"  # a training script's checkpoint with an object beside the tensors
    torch.save({"state_dict": {"w": torch.zeros(2)}, "data_dir": PurePosixPath("/data")}, with_objects)
    with pytest.raises(CheckpointError, match=r"refused — the file is a pickle that holds Python objects "
                                              r"\(pathlib.PurePosixPath\)"):
        read_state_dict(with_objects)
    noise = tmp_path / "download.pth"  # e.g. an interrupted download: not "a pickle that holds Python objects"
    noise.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="a pickle of Python objects, or a corrupt file"):
        read_state_dict(noise)
    text = tmp_path / "notes.pth"
    text.write_text("hello world")
    with pytest.raises(CheckpointError, match="not a readable PyTorch weights file — corrupt, cut short"):
        read_state_dict(text)


def test_foreign_and_corrupt_files_get_clear_messages(tmp_path):
    import timm

    other = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), other)
    with pytest.raises(CheckpointError, match="does not fit this model.*tensors"):
        load_model("resnet50", checkpoint=other, device="cpu")
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(checkpoint=corrupt, device="cpu")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="--model NAME"):
        load_model(checkpoint=plain, device="cpu")
    with pytest.raises(CheckpointError, match="unknown weights file type"):
        read_state_dict(tmp_path.joinpath("x.txt").write_text("x") and tmp_path / "x.txt")
    photo = tmp_path / "car.jpg"  # a photo given where the checkpoint goes: not "a plain state dict" (it said so)
    photo.write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    with pytest.raises(CheckpointError, match=r"car.jpg: unknown weights file type '.jpg'"):
        load_model(checkpoint=photo, device="cpu")
    # without --model, a file that cannot be read, or is refused, says that — not "say which architecture" (it did,
    # and only once the architecture was given did the real problem show)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(_bytes_of_a_state_dict(tmp_path)[:1000])
    with pytest.raises(CheckpointError, match="cut.pth: not a readable PyTorch weights file — corrupt, cut short"):
        load_model(checkpoint=cut, device="cpu")
    whole = tmp_path / "whole_model.pth"  # torch.save(model): a pickle of the network's classes
    torch.save(timm.create_model("resnet18", pretrained=False), whole)
    with pytest.raises(CheckpointError, match=r"whole_model.pth: refused — the file is a pickle that holds Python "
                                              r"objects \(timm.layers.adaptive_avgmax_pool.SelectAdaptivePool2d, "
                                              r"timm.models.resnet.BasicBlock, timm.models.resnet.ResNet\), not just"):
        load_model(checkpoint=whole, device="cpu")  # the same names, in the same order, in every process
    with pytest.raises(CheckpointError, match="other.pth is a plain state dict without CarNet metadata"):
        load_model(checkpoint=other, device="cpu")  # readable: this is what it lacks


def _bytes_of_a_state_dict(tmp_path) -> bytes:
    path = tmp_path / "whole.pth"
    torch.save({"conv.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, path)
    return path.read_bytes()


def test_wrong_number_of_classes_is_explained(tmp_path):
    import timm

    path = tmp_path / "resnet50_cars.pth"
    torch.save({"state_dict": timm.create_model("resnet50", num_classes=40).state_dict()}, path)  # wrapped
    with pytest.raises(CheckpointError, match="resnet50_cars.pth was trained on 40 classes of its own .*not resnet50's "
                                              "1000 imagenet-1k classes.*give them in training order"):
        load_model("resnet50", checkpoint=path, device="cpu")


@pytest.mark.slow
@pytest.mark.shared
def test_real_mobilenetv2_weights_load_from_both_key_layouts(tmp_path, car_photos, monkeypatch):
    """The same ImageNet tensors under torchvision and timm key names give the same top-5 on real photos."""
    tv = load_model("mobilenetv2_100", checkpoint=need(MOBILENET_TV), device="cpu")
    tm = load_model("mobilenetv2_100", checkpoint=need(MOBILENET_TIMM), device="cpu")
    assert "by position" in tv.weights.detail and "by name" in tm.weights.detail
    photos = car_photos[::30]
    a, b = predict(tv, photos), predict(tm, photos)
    for pa, pb in zip(a.predictions, b.predictions):
        assert pa.class_names == pb.class_names
        assert pa.probabilities == pytest.approx(pb.probabilities, abs=1e-6)
    # a real model, not noise: most of these car photos get a vehicle class at top-1
    from carnet_core.models.labels import VEHICLE_CLASSES

    assert sum(p.top1 in VEHICLE_CLASSES for p in a.predictions) >= 0.7 * len(photos)

    # and the torchvision-layout file is found in weights/ by its name
    monkeypatch.setenv("CARNET_WEIGHTS_DIR", str(tmp_path))
    os.symlink(MOBILENET_TV, tmp_path / MOBILENET_TV.name)
    found = load_model("mobilenetv2_100", device="cpu")
    assert found.weights.source == "weights_dir" and found.weights.location.endswith(MOBILENET_TV.name)


def test_a_timm_train_py_checkpoint_loads_with_its_ema_weights(cli, tmp_path, monkeypatch, capsys):
    """``model_best.pth.tar`` as timm's train.py writes it (timm's own CheckpointSaver: optimizer state, the run's
    argparse options, EMA weights beside the model's) dropped into the weights folder: the EMA weights load."""
    import argparse

    import timm
    from timm.utils import CheckpointSaver, ModelEmaV3

    torch.manual_seed(0)
    net = timm.create_model("mobilenetv2_100", pretrained=False)
    ema = ModelEmaV3(net, decay=0.9)
    with torch.no_grad():
        ema.module.classifier.weight.mul_(2.0)  # the EMA weights differ from the model's, as after training
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    run = tmp_path / "output" / "train" / "20261122-mobilenetv2_100"
    run.mkdir(parents=True)
    saver = CheckpointSaver(net, optimizer, args=argparse.Namespace(model="mobilenetv2_100", lr=0.1, epochs=3),
                            model_ema=ema, checkpoint_dir=str(run))
    saver.save_checkpoint(epoch=0, metric=41.5)
    weights = tmp_path / "weights"
    weights.mkdir()
    (run / "model_best.pth.tar").rename(weights / "mobilenetv2_100-model_best.pth.tar")
    monkeypatch.setenv("CARNET_WEIGHTS_DIR", str(weights))

    model = load_model("mobilenetv2_100", device="cpu", use_hub=False)
    assert model.weights.source == "weights_dir" and "model_best.pth.tar" in model.weights.describe()
    loaded = model.module.state_dict()
    assert torch.equal(loaded["classifier.weight"], ema.module.state_dict()["classifier.weight"])
    assert not torch.equal(loaded["classifier.weight"], net.state_dict()["classifier.weight"])

    # without a model name, the architecture the run's options name is used (predict/explain --checkpoint FILE)
    assert load_model(checkpoint=run / "last.pth.tar", device="cpu").name == "mobilenetv2_100"
    from conftest import colour_image

    colour_image((200, 30, 30), 0).save(tmp_path / "red.png")
    code, out, err = cli("predict", tmp_path / "red.png", "--checkpoint", run / "last.pth.tar", "--json")
    assert code == 0, err
    assert json.loads(out)["model"] == "mobilenetv2_100"  # not the default model, which it does not fit
    other = CheckpointSaver(net, optimizer, args=argparse.Namespace(model="convnext_tiny"), checkpoint_dir=str(run))
    other.save_checkpoint(epoch=1, metric=40.0)
    with pytest.raises(CheckpointError, match="--model NAME.*it names 'convnext_tiny', which is not a registered"):
        load_model(checkpoint=run / "last.pth.tar", device="cpu")


def _lightning_checkpoint(path, network_state, hparams, extra=None):
    """A ``.ckpt`` as Lightning's trainer writes it (``Trainer.save_checkpoint``'s layout): the LightningModule's
    ``state_dict`` — its network under the attribute ``model.``, a loss's class weights beside it — with the loop,
    callback, optimizer and scheduler states and the module's ``hyper_parameters``."""
    state = {f"model.{k}": v for k, v in network_state.items()}
    state.update(extra or {})
    state["criterion.weight"] = torch.ones(7)
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    torch.save({"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.5.1", "state_dict": state,
                "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4, "completed": 3}}}},
                "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
                    "monitor": "val_loss", "best_model_score": torch.tensor(0.42),
                    "best_model_path": "/runs/epoch=3-step=120.ckpt", "dirpath": "/runs"}},
                "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [scheduler.state_dict()],
                "hparams_name": "kwargs", "hyper_parameters": hparams}, path)
    return path


@pytest.mark.shared
def test_a_lightning_checkpoint_loads_its_network_from_under_the_module_attribute(tmp_path, car_photos, monkeypatch):
    """A LightningModule wrapping the real ImageNet MobileNetV2 as ``self.model``, saved by Lightning: CarNet finds
    the network's tensors under ``model.`` (by name, not by position: the loss's weights sit beside them), the
    architecture from its hyper-parameters, and gives the plain file's probabilities on real photos."""
    plain = load_model("mobilenetv2_100", checkpoint=need(MOBILENET_TIMM), device="cpu")
    ckpt = _lightning_checkpoint(tmp_path / "epoch=3-step=120.ckpt", read_state_dict(MOBILENET_TIMM),
                                 {"model_name": "mobilenetv2_100", "lr": 1e-3, "label_smoothing": 0.1})
    model = load_model(checkpoint=ckpt, device="cpu")  # no model name: the hyper-parameters give it
    assert model.name == "mobilenetv2_100"
    assert "loaded by name (the tensors under 'model.')" in model.weights.describe()
    photos = car_photos[::40]
    for a, b in zip(predict(plain, photos).predictions, predict(model, photos).predictions):
        assert a.class_names == b.class_names
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)

    # dropped into the weights folder under the model's name, it is the model's weights
    weights = tmp_path / "weights"
    weights.mkdir()
    ckpt.rename(weights / "mobilenetv2_100-epoch=3.ckpt")
    monkeypatch.setenv("CARNET_WEIGHTS_DIR", str(weights))
    found = load_model("mobilenetv2_100", device="cpu", use_hub=False)
    assert found.weights.source == "weights_dir" and "under 'model.'" in found.weights.detail


def test_older_lightning_checkpoints_with_an_attribute_dict_load_and_other_objects_are_still_refused(tmp_path,
                                                                                                    monkeypatch):
    """Older Lightning versions pickled ``hyper_parameters`` as their ``AttributeDict`` (pytorch_lightning's, later
    lightning_fabric's): read as a plain dict, with no Lightning needed; an object beside it is still refused, and the
    message names that object, not the AttributeDict."""
    import sys
    import types
    from pathlib import PurePosixPath

    import timm
    from lightning_fabric.utilities.data import AttributeDict

    torch.manual_seed(0)
    net = timm.create_model("mobilenetv2_100", pretrained=False).state_dict()
    fabric_style = _lightning_checkpoint(tmp_path / "fabric.ckpt", net, AttributeDict(model_name="mobilenetv2_100"))
    # pytorch_lightning 1.x's class, which is not installed here: a stand-in under its module path, for pickling only
    class LegacyAttributeDict(dict):
        pass

    parts = ["pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing"]
    for name in parts:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    LegacyAttributeDict.__module__, LegacyAttributeDict.__qualname__ = parts[-1], "AttributeDict"
    sys.modules[parts[-1]].AttributeDict = LegacyAttributeDict
    legacy = _lightning_checkpoint(tmp_path / "legacy.ckpt", net, LegacyAttributeDict(arch="mobilenetv2_100", lr=0.1))
    for name in parts:
        monkeypatch.delitem(sys.modules, name)
    for path, attribute_dict in ((fabric_style, "lightning_fabric"), (legacy, "pytorch_lightning")):
        assert any(g.startswith(attribute_dict) for g in torch.serialization.get_unsafe_globals_in_checkpoint(path))
        model = load_model(checkpoint=path, device="cpu")  # the architecture from the AttributeDict
        assert model.name == "mobilenetv2_100" and "under 'model.'" in model.weights.detail
        assert torch.equal(model.module.state_dict()["classifier.weight"], net["classifier.weight"])

    with_object = _lightning_checkpoint(tmp_path / "obj.ckpt", net, AttributeDict(data_dir=PurePosixPath("/data")))
    with pytest.raises(CheckpointError, match=r"refused — the file is a pickle that holds Python objects "
                                              r"\(pathlib.PurePosixPath\), not just tensors"):
        load_model("mobilenetv2_100", checkpoint=with_object, device="cpu")


def test_a_lightning_checkpoint_with_an_ema_copy_loads_the_ema_weights_and_a_misfit_is_explained(tmp_path):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=1000).eval()
    ema = {k: v * 2 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    ckpt = _lightning_checkpoint(tmp_path / "last.ckpt", net.state_dict(), {"arch": "mobilenetv2_100"},
                                 extra={f"ema_model.module.{k}": v for k, v in ema.items()})
    model = load_model(checkpoint=ckpt, device="cpu")
    assert "(the tensors under 'ema_model.module.')" in model.weights.detail
    for k, v in model.module.state_dict().items():
        assert torch.equal(v, ema[k]), k
    # without the EMA copy: the network's own tensors
    plain = _lightning_checkpoint(tmp_path / "plain.ckpt", net.state_dict(), {"arch": "mobilenetv2_100"})
    for k, v in load_model(checkpoint=plain, device="cpu").module.state_dict().items():
        assert torch.equal(v, net.state_dict()[k]), k
    # the same module's checkpoint given as another architecture: no prefix fits, and the message says so
    with pytest.raises(CheckpointError, match="does not fit this model.*Is it for another architecture"):
        load_model("efficientnet_b0", checkpoint=plain, device="cpu", use_hub=False)


# --- weights files trained on classes of their own (timm train.py, torchvision-style training) --------------------

def _dataset(root, names):
    for split in ("train", "val"):
        for name in names:
            (root / split / name).mkdir(parents=True)
    return root


@pytest.mark.shared
def test_a_timm_train_py_checkpoint_of_its_own_classes_finds_them_in_its_dataset(six_class_mobilenet, tmp_path, car_photos, capsys):
    """timm's train.py on a folder dataset numbers the class folders in natural order (case ignored: "convertible",
    "Jeep", "limousine", ...), not sorted ("Jeep" first). The checkpoint names its dataset; CarNet reads the class
    names from it in that order, and the real photos get the ImageNet model's probabilities over the six classes."""
    import argparse

    import timm
    from PIL import Image
    from timm.utils import CheckpointSaver

    from carnet_core.inference.engines import softmax
    from carnet_core.models.labels import imagenet_class_names

    natural = ["convertible", "Jeep", "limousine", "minivan", "pickup", "sports car"]
    data = _dataset(tmp_path / "cars6", SIX)
    state, rows = six_class_mobilenet(natural)
    net = timm.create_model("mobilenetv2_100", num_classes=6)
    net.load_state_dict(state)
    args = argparse.Namespace(model="mobilenetv2_100", num_classes=6, data_dir=str(data), dataset="",
                              train_split="train", class_map="")
    CheckpointSaver(net, torch.optim.SGD(net.parameters(), lr=0.1), args=args,
                    checkpoint_dir=str(tmp_path)).save_checkpoint(epoch=0, metric=80.0)
    ckpt = tmp_path / "model_best.pth.tar"

    model = load_model(checkpoint=ckpt, device="cpu")
    assert model.class_names == tuple(natural) and model.label_set == "cars6" and model.name == "mobilenetv2_100-cars6"
    assert f"class names from its training options: {data / 'train'} (natural folder order)" in model.weights.detail
    imagenet = load_model("mobilenetv2_100", checkpoint=MOBILENET_TIMM, device="cpu")
    photos = car_photos[::40]
    x = imagenet.preprocess([Image.open(p).convert("RGB") for p in photos])
    with torch.no_grad():
        expected = softmax(imagenet.module(x)[:, rows])
    got = predict(model, photos, topk=6)
    for pred, probs in zip(got.predictions, expected):
        assert pred.probabilities == pytest.approx(sorted(probs.tolist(), reverse=True), abs=1e-5)
        assert pred.top1 == natural[int(probs.argmax())]
    assert {p.top1 for p in got.predictions} <= set(natural) and "imagenet" not in model.label_set
    assert imagenet_class_names()[rows[0]] == "convertible"

    # the dataset is not on this machine: the message says what the checkpoint points to and what to give
    moved = tmp_path / "elsewhere"
    data.rename(moved)
    with pytest.raises(CheckpointError, match=r"model_best.pth.tar was trained on 6 classes of its own.*the dataset "
                                              r"folder it was trained on; its timm training options point to .*cars6/train"):
        load_model(checkpoint=ckpt, device="cpu")
    # in a weights folder it is listed as needing its class names; once its dataset is on this machine, it is not
    # (the check is kept per file version, and for such a file per version of what its options point to as well)
    from carnet_core.models.loading import usable_weights

    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(ckpt, weights / "mobilenetv2_100-cars6.pth")
    needs = "trained on classes of its own: needs their names"
    assert usable_weights("mobilenetv2_100", folder=weights, use_hub=False).detail == needs
    moved.rename(data)
    assert needs not in usable_weights("mobilenetv2_100", folder=weights, use_hub=False).describe()
    data.rename(moved)
    # ...then the folder given by hand is read in the same natural order, because the file is timm's
    assert load_model(checkpoint=ckpt, device="cpu", class_names=moved).class_names == tuple(natural)

    # its --class-map file, when it has one, wins over the dataset's folders
    (tmp_path / "map.txt").write_text("\n".join(natural) + "\n")
    args.class_map = str(tmp_path / "map.txt")
    (tmp_path / "run2").mkdir()
    CheckpointSaver(net, torch.optim.SGD(net.parameters(), lr=0.1), args=args,
                    checkpoint_dir=str(tmp_path / "run2")).save_checkpoint(epoch=0, metric=80.0)
    mapped = load_model(checkpoint=tmp_path / "run2" / "model_best.pth.tar", device="cpu")
    assert mapped.class_names == tuple(natural) and "map.txt" in mapped.weights.detail


@pytest.mark.shared
def test_a_plain_state_dict_of_its_own_classes_takes_them_from_a_file_or_folder(six_class_mobilenet, tmp_path, car_photos):
    """torchvision-style training numbers class folders sorted by name ("Jeep" before "convertible")."""
    from carnet_core.errors import CarNetError

    ordered = sorted(SIX)
    state, _ = six_class_mobilenet(ordered)
    path = tmp_path / "cars6.pth"
    torch.save(state, path)
    data = _dataset(tmp_path / "cars6", SIX)

    with pytest.raises(CheckpointError, match=r"cars6.pth was trained on 6 classes of its own.*one name per line"):
        load_model("mobilenetv2_100", checkpoint=path, device="cpu")
    by_folder = load_model("mobilenetv2_100", checkpoint=path, device="cpu", class_names=data)
    assert by_folder.class_names == tuple(ordered) and by_folder.label_set == "cars6"
    (tmp_path / "six.json").write_text(json.dumps(ordered))
    by_list = load_model("mobilenetv2_100", checkpoint=path, device="cpu", class_names=tmp_path / "six.json")
    assert by_list.label_set == "six"
    a, b = predict(by_folder, car_photos[:3]), predict(by_list, car_photos[:3])
    assert [p.top1 for p in a.predictions] == [p.top1 for p in b.predictions]
    assert a.predictions[0].probabilities == pytest.approx(b.predictions[0].probabilities, abs=0)

    with pytest.raises(CheckpointError, match=r"cars6.pth has 6 classes \(its classifier's rows\), but .*five.txt name 5"):
        (tmp_path / "five.txt").write_text("\n".join(ordered[:5]))
        load_model("mobilenetv2_100", checkpoint=path, device="cpu", class_names=tmp_path / "five.txt")
    carnet = by_folder.save(tmp_path / "cars6.safetensors")
    with pytest.raises(CheckpointError, match="CarNet checkpoint: it carries its own class names"):
        load_model(checkpoint=carnet, device="cpu", class_names=data)
    assert load_model(checkpoint=carnet, device="cpu").class_names == tuple(ordered)
    with pytest.raises(CarNetError, match="no such file or folder"):
        load_model("mobilenetv2_100", checkpoint=path, device="cpu", class_names=tmp_path / "missing.txt")
    untrained = load_model("mobilenetv2_100", weights="random", device="cpu", class_names=["a", "b"])
    assert untrained.class_names == ("a", "b") and untrained.label_set == "custom"  # not ImageNet's label set
    assert untrained.name == "mobilenetv2_100-custom"


def test_class_names_are_read_from_text_json_csv_and_dataset_folders(tmp_path):
    from carnet_core.errors import CarNetError
    from carnet_core.models.labels import read_class_names

    (tmp_path / "a.txt").write_text("\ufeffcar\nbike \n\n")
    assert read_class_names(tmp_path / "a.txt") == ("car", "bike")
    (tmp_path / "b.json").write_text(json.dumps({"bike": 1, "car": 0}))
    assert read_class_names(tmp_path / "b.json") == ("car", "bike")
    (tmp_path / "classes.csv").write_text("index,class_name\n1,bike\n0,car\n10,van\n2,bus\n")
    assert read_class_names(tmp_path / "classes.csv") == ("car", "bike", "bus", "van")
    data = tmp_path / "data"
    for name in ("class10", "class9", "Bus", "_uploads", ".hidden"):
        (data / "train" / name).mkdir(parents=True)
    (data / "val" / "other").mkdir(parents=True)
    assert read_class_names(data) == ("Bus", "class10", "class9")
    assert read_class_names(data, order="natural") == ("Bus", "class9", "class10")
    assert read_class_names(["x", "y"]) == ("x", "y")

    (tmp_path / "dup.txt").write_text("car\nbike\ncar\n")
    (tmp_path / "gap.txt").write_text("car\n\nbike\n")
    (tmp_path / "bad.json").write_text('{"car": 0, "bike": 2}')
    (tmp_path / "cols.csv").write_text("id,label\n0,car\n")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81")
    for source, message in [("dup.txt", "names 'car' more than once"), ("gap.txt", "class 1 has no name"),
                            ("bad.json", "class indices are not 0..1"), ("cols.csv", "no class_name"),
                            ("bin.txt", "cannot read class names from it"), ("none.txt", "no such file or folder")]:
        with pytest.raises(CarNetError, match=message):
            read_class_names(tmp_path / source)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CarNetError, match="names no class"):
        read_class_names(tmp_path / "empty")
    with pytest.raises(CarNetError, match="class order must be"):
        read_class_names(data, order="alphabetical")


def test_timms_pickled_class_map_is_read_as_data_and_a_pickle_with_code_is_refused(tmp_path):
    """timm's ``--class-map`` may be a ``.pkl`` of ``{name: index}`` (``timm.data.load_class_map`` reads both): the
    same names in the same order as timm's reader, and a pickle that would run code is refused without running it."""
    from timm.data.readers.class_map import load_class_map

    from carnet_core.errors import CarNetError
    from carnet_core.models.labels import read_class_names

    class_to_idx = {"sedan": 2, "SUV": 0, "pickup": 1}
    with open(tmp_path / "class_map.pkl", "wb") as f:
        pickle.dump(class_to_idx, f)
    timm_map = load_class_map(str(tmp_path / "class_map.pkl"))
    assert read_class_names(tmp_path / "class_map.pkl") == tuple(sorted(timm_map, key=timm_map.get))
    assert read_class_names(tmp_path / "class_map.pkl") == ("SUV", "pickup", "sedan")

    marker = tmp_path / "pwned"
    _Evil.marker = marker
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"car": _Evil()}, f)
    with pytest.raises(CarNetError, match=r"cannot read class names from it \(UnpicklingError: Global posix.system is "
                                          r"not permitted"):
        read_class_names(tmp_path / "evil.pkl")
    assert not marker.exists()
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(class_to_idx)[:-5])
    with pytest.raises(CarNetError, match="cannot read class names from it"):
        read_class_names(tmp_path / "cut.pkl")
    with open(tmp_path / "number.pkl", "wb") as f:
        pickle.dump(7, f)
    with pytest.raises(CarNetError, match="Invalid class map file, expected a dict"):
        read_class_names(tmp_path / "number.pkl")


def test_a_timm_train_py_checkpoint_brings_the_data_config_it_was_trained_with(tmp_path):
    """A run with ``--img-size 160 --mean 0.5 0.5 0.5`` is classified at 160 px with that mean (timm's own
    resolve_data_config over the run's options), and keeps it when saved as a CarNet checkpoint; a run that set
    none of them gets the model's data config as before."""
    import argparse

    import timm
    from timm.utils import CheckpointSaver

    from carnet_core.models.classifier import INFERENCE_CROP_PCT

    net = timm.create_model("mobilenetv2_100", pretrained=False)
    options = dict(model="mobilenetv2_100", num_classes=1000, img_size=None, input_size=None, mean=None, std=None,
                   crop_pct=None, interpolation="")
    for run, changes in (("plain", {}), ("small", dict(img_size=160, mean=[0.5, 0.5, 0.5], interpolation="bilinear"))):
        (tmp_path / run).mkdir()
        CheckpointSaver(net, torch.optim.SGD(net.parameters(), lr=0.1), args=argparse.Namespace(**{**options, **changes}),
                        checkpoint_dir=str(tmp_path / run)).save_checkpoint(epoch=0, metric=1.0)
    plain = load_model(checkpoint=tmp_path / "plain" / "last.pth.tar", device="cpu")
    assert plain.data_config == load_model("mobilenetv2_100", weights="random", device="cpu").data_config
    assert "data config" not in plain.weights.detail

    small = load_model(checkpoint=tmp_path / "small" / "last.pth.tar", device="cpu")
    assert small.data_config["input_size"] == [3, 160, 160] and small.data_config["mean"] == [0.5, 0.5, 0.5]
    assert small.data_config["interpolation"] == "bilinear" and small.data_config["crop_pct"] == INFERENCE_CROP_PCT
    assert small.data_config["std"] == plain.data_config["std"]
    assert "data config from its training options" in small.weights.detail
    from PIL import Image

    assert small.preprocess([Image.new("RGB", (640, 480), (255, 255, 255))]).shape == (1, 3, 160, 160)
    saved = load_model(checkpoint=small.save(tmp_path / "small.safetensors"), device="cpu")
    assert saved.data_config == small.data_config


@pytest.mark.parametrize("change, message", [
    ({"input_size": [3, 12000, 12000]}, r"input_size \[3, 12000, 12000\] is not \(3, H, W\) with H and W from 16 to 1024"),
    ({"input_size": "big"}, r"input_size is 'big', not \(3, H, W\)"),
    ({"std": [0.5, 0.0, 0.5]}, r"std \[0.5, 0.0, 0.5\] has a value of 0 or less"),
    ({"mean": [float("nan"), 0.5, 0.5]}, r"mean \[nan, 0.5, 0.5\] is not three finite numbers"),
    ({"crop_pct": 2}, r"crop_pct 2 is not in \(0, 1\]"),
])
def test_checkpoint_metadata_out_of_bounds_is_refused_naming_the_field(tmp_path, change, message):
    """input_size 12000×12000 allocated 6.9 GB and raised a RuntimeError traceback; std = 0 gave NaN
    probabilities shown as results. The metadata is checked against bounds on load."""
    model = load_model("mobilenetv2_100", weights="random", device="cpu")
    meta = {**model.describe(), "name": "edited"}
    save_checkpoint(tmp_path / "edited.safetensors", model.module.state_dict(),
                    {**meta, "data_config": {**model.data_config, **change}})
    with pytest.raises(CheckpointError, match="edited.safetensors: its data config's " + message):
        load_model(checkpoint=tmp_path / "edited.safetensors", device="cpu")


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    model = load_model("mobilenetv2_100", weights="random", device="cpu")
    state = {k: v.clone() for k, v in model.module.state_dict().items()}
    state["conv_stem.weight"][0, 0, 0, 0] = float("inf")
    save_checkpoint(tmp_path / "nan.safetensors", state, model.describe())
    with pytest.raises(CheckpointError, match="tensor conv_stem.weight holds NaN or infinite values"):
        load_model(checkpoint=tmp_path / "nan.safetensors", device="cpu")
