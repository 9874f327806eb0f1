import json
import os
import re
import socket

import pytest
import torch

from carnet_core import WeightsNotFoundError, get_spec, list_models, load_model
from carnet_core.errors import CheckpointError, UnknownModelError
from carnet_core.models import hub as _hub
from carnet_core.models import weights as W
from carnet_core.models.labels import VEHICLE_CLASSES, imagenet_class_names
from carnet_core.models.registry import closest_model_name


def test_registry_has_the_required_models_with_imagenet_labels():
    names = {s.name for s in list_models()}
    assert {"efficientnet_lite0", "mobilenetv2_100", "resnet50", "efficientnet_b0", "efficientnet_b3",
            "seresnet50"} <= names
    assert all(s.label_set == "imagenet-1k" for s in list_models())
    assert list_models()[0].name == "efficientnet_lite0"  # defaults first, offline default first of all


def test_unknown_model_names_the_registered_ones():
    with pytest.raises(UnknownModelError, match="(?i)registered models: .*resnet50"):
        get_spec("resnet5O")
    typos = [("resnet5", "resnet50"), ("EfficientNet-B0", "efficientnet_b0"), ("mobilenetv2", "mobilenetv2_100"),
             ("tf_efficientnet_lite0", "efficientnet_lite0"), ("SE-ResNet50", "seresnet50")]
    for typed, meant in typos:
        with pytest.raises(UnknownModelError, match=f"unknown model '{typed}' — did you mean {meant}\\? Registered "):
            get_spec(typed)
    with pytest.raises(UnknownModelError) as exc:
        get_spec("vit_base_patch16_224")
    assert "did you mean" not in str(exc.value)  # nothing registered is close: no guess
    assert closest_model_name("resnet18") is None  # another network, not a typo of resnet50


def test_imagenet_labels_and_vehicle_view():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[817] == "sports car" and names[717] == "pickup"
    assert set(VEHICLE_CLASSES) <= set(names)
    assert "grille" not in VEHICLE_CLASSES and "car wheel" not in VEHICLE_CLASSES


def _state_file(path, arch="resnet50"):
    import timm

    torch.save(timm.create_model(arch, pretrained=False).state_dict(), path)
    return path


def test_resolution_order(tmp_path, monkeypatch):
    spec = get_spec("efficientnet_lite0")
    folder = tmp_path / "weights"
    folder.mkdir()
    # 4. nothing else: the bundled package
    assert W.resolve(spec, folder=folder).source == "offline_package"
    # 3. the hub, when reachable, comes before the package ...
    monkeypatch.setattr(_hub, "hub_reachable", lambda: True)
    assert W.resolve(spec, folder=folder) == W.WeightsSource("hub", "timm/tf_efficientnet_lite0.in1k")
    # ... and the local HF cache before a download
    cached = tmp_path / "model.safetensors"
    monkeypatch.setattr(W, "find_in_hf_cache", lambda s: cached)
    assert W.resolve(spec, folder=folder).source == "hub_cache"
    # 2. a matching file in weights/ beats the hub; names must match the model, not merely start alike
    (folder / "efficientnet_lite0x.pth").write_bytes(b"")
    assert W.resolve(spec, folder=folder).source == "hub_cache"
    (folder / "efficientnet_lite0-mine.pth").write_bytes(b"")
    assert W.resolve(spec, folder=folder) == W.WeightsSource("weights_dir", str(folder / "efficientnet_lite0-mine.pth"))
    # 1. an explicit checkpoint beats everything
    assert W.resolve(spec, checkpoint="x.safetensors", folder=folder).source == "checkpoint"


def test_aliases_match_torchvision_file_names(tmp_path):
    (tmp_path / "resnet50-19c8e357.pth").write_bytes(b"")
    (tmp_path / "seresnet50.pth").write_bytes(b"")
    assert W.find_in_weights_dir(get_spec("resnet50"), tmp_path).name == "resnet50-19c8e357.pth"
    assert W.find_in_weights_dir(get_spec("seresnet50"), tmp_path).name == "seresnet50.pth"
    (tmp_path / "mobilenet_v2-b0353104.pth").write_bytes(b"")
    assert W.find_in_weights_dir(get_spec("mobilenetv2_100"), tmp_path).name == "mobilenet_v2-b0353104.pth"


def test_missing_weights_are_an_error_not_random(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        load_model("resnet50", device="cpu", weights_folder=tmp_path)
    msg = str(info.value)
    assert "resnet50" in msg and str(tmp_path / "resnet50.safetensors") in msg and "random" in msg


def test_random_weights_only_when_asked_and_labelled():
    model = load_model("resnet50", weights="random", device="cpu")
    assert model.is_random and "RANDOM" in model.weights.describe()
    assert model.num_params == 25_557_032


def test_weights_dir_file_is_loaded_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("CARNET_WEIGHTS_DIR", str(tmp_path))
    path = _state_file(tmp_path / "resnet50-19c8e357.pth")
    model = load_model("resnet50", device="cpu")
    assert model.weights.source == "weights_dir" and "loaded by name" in model.weights.detail
    expected = torch.load(path, weights_only=True)["fc.weight"]
    assert torch.equal(model.module.state_dict()["fc.weight"], expected)


def test_hf_hub_offline_is_respected_without_touching_the_network(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("network was touched")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _hub.reset()
    assert _hub.hub_reachable() is False


def test_hub_check_is_made_once_and_remembered(monkeypatch):
    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise OSError("unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("CARNET_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    _hub.reset()
    try:
        assert _hub.hub_reachable() is False
        assert _hub.hub_reachable() is False
        assert len(calls) == 1
    finally:
        _hub.reset()


def test_blank_settings_mean_the_defaults_not_the_current_folder(tmp_path, monkeypatch):
    """``CARNET_CACHE_DIR=`` in a shell made the ONNX cache the current folder (an 18 MB export landed in the
    project); every folder setting, and CARNET_ENGINE, now treats a blank value as unset."""
    from carnet_core import config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folders = {"CARNET_WEIGHTS_DIR": config.weights_dir, "CARNET_JOBS_DIR": config.jobs_dir,
               "CARNET_CACHE_DIR": config.cache_dir, "CARNET_GALLERY_DIR": config.gallery_dir,
               "CARNET_DATA_ROOT": config.data_root, "CARNET_MAPPINGS_DIR": config.mappings_dir}
    for name, folder in folders.items():
        monkeypatch.setenv(name, "")
        assert folder().resolve() != tmp_path, name
        monkeypatch.setenv(name, "~/carnet-test")
        assert folder() == tmp_path / "home" / "carnet-test", name  # ~ expanded, as a shell would
    monkeypatch.setenv("CARNET_ENGINE", "")
    model = load_model("efficientnet_lite0", device="cpu", use_hub=False)
    from carnet_core.inference.selection import select_engine

    assert select_engine(model, "torch").engine.name == "torch"


def test_a_weights_folder_file_that_cannot_be_used_is_not_listed_as_the_models_weights(cli, unusable_weights_folder,
                                                                                       tmp_path, capsys, monkeypatch):
    """A damaged, refused or misfitting file named after a model was listed as its weights ("available: yes") until
    the model was picked; the Compare page, whose default is ResNet-50, stopped at "Cannot load resnet50". It is now
    checked on its tensor shapes (nothing loaded) and said to be unusable, with load_model's own reason."""

    from carnet_core.errors import ClassNamesNeededError
    from carnet_core.models.loading import check_weights_file, usable_weights

    folder = unusable_weights_folder
    expected = {"resnet50": "resnet50-run.pth: refused — the file is a pickle that holds Python objects",
                "efficientnet_b0": "efficientnet_b0.pth: the file is empty (0 bytes)",
                "efficientnet_b3": "efficientnet_b3.pth does not fit this model: the file has 314 tensors",
                "seresnet50": "seresnet50.pth does not fit this model"}  # six unnamed classes, but another network
    for name, reason in expected.items():
        with pytest.raises(CheckpointError, match=f"the file for {name} in the weights folder cannot be used: "
                                                  f"{re.escape(reason)}"):
            usable_weights(name, use_hub=False)
        if name != "seresnet50":  # load_model asks for its class names first; the check finds the misfit first
            with pytest.raises(CheckpointError) as loading:
                load_model(name, device="cpu", use_hub=False)
            with pytest.raises(CheckpointError) as checking:
                check_weights_file(name, W.find_in_weights_dir(get_spec(name)))
            assert str(checking.value) == str(loading.value)  # load_model's own message
    good = usable_weights("mobilenetv2_100", use_hub=False)
    assert good.source == "weights_dir" and good.location.endswith("mobilenetv2_100.pth")
    assert check_weights_file("mobilenetv2_100", good.location) == "by name"

    # asked on every rerun of a page with a model picker: a file is checked again only once it changes
    import carnet_core.models.loading as M

    checked = []
    with monkeypatch.context() as patch:
        patch.setattr(M, "check_weights_file", lambda name, path: checked.append(name) or "by name")
        for _ in range(3):
            usable_weights("mobilenetv2_100", use_hub=False)
        assert checked == []  # checked above, unchanged since
        os.utime(folder / "mobilenetv2_100.pth", ns=(1, 1))
        usable_weights("mobilenetv2_100", use_hub=False)
        usable_weights("mobilenetv2_100", use_hub=False)
        assert checked == ["mobilenetv2_100"]

    # a file of the right network trained on classes of its own is usable: loading it says what to give
    own = tmp_path / "own"
    own.mkdir()
    state = torch.load(folder / "seresnet50.pth", weights_only=True)
    torch.save(state, own / "mobilenetv2_100-cars6.pth")
    needs_names = usable_weights("mobilenetv2_100", folder=own, use_hub=False)
    assert needs_names.describe() == ("file in the weights folder: mobilenetv2_100-cars6.pth (trained on classes of "
                                      "its own: needs their names)")
    with pytest.raises(ClassNamesNeededError):
        check_weights_file("mobilenetv2_100", own / "mobilenetv2_100-cars6.pth")

    code, out, err = cli("models", "--no-hub")
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.split("\n\n")[0].splitlines()[1:]}  # the registered models
    assert "UNUSABLE — the file for resnet50 in the weights folder cannot be used: resnet50-run.pth: refused" \
        in lines["resnet50"]
    assert "UNUSABLE" in lines["efficientnet_b3"] and "MISSING" in lines["efficientnet_b1"]
    assert "file in the weights folder: mobilenetv2_100.pth" in lines["mobilenetv2_100"]
    code, out, err = cli("models", "--no-hub", "--json")
    available = {row["name"]: row["available"] for row in json.loads(out)}
    assert code == 0 and available["mobilenetv2_100"] and available["efficientnet_lite0"]
    unusable_or_missing = ("resnet50", "efficientnet_b0", "efficientnet_b3", "seresnet50", "efficientnet_b1")
    assert not any(available[n] for n in unusable_or_missing)


def test_a_folder_where_a_weights_file_should_be_is_named_as_one(tmp_path, monkeypatch, cli):
    """A folder named efficientnet_b3.safetensors (an unzipped download, say) was reported as "MISSING — put a file
    at …/efficientnet_b3.safetensors", where it already was."""
    monkeypatch.setenv("CARNET_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "efficientnet_b3.safetensors").mkdir()
    with pytest.raises(CheckpointError, match=r"efficientnet_b3\.safetensors is a folder, not a weights file"):
        W.resolve(get_spec("efficientnet_b3"), use_hub=False)
    with pytest.raises(WeightsNotFoundError):
        W.resolve(get_spec("efficientnet_b2"), use_hub=False)  # a file that is simply missing is still said so
    code, out, _ = cli("models", "--no-hub")
    line = next(row for row in out.splitlines() if row.startswith("efficientnet_b3 "))
    assert code == 0 and "UNUSABLE — " in line and "is a folder, not a weights file" in line
