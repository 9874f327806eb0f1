"""The ★ models listed beside the registered ones: unique titles, and checkpoints that cannot be used said so."""

import pytest
import torch
from conftest import ROOT
from streamlit.testing.v1 import AppTest

from carnet_core.models.catalog import list_checkpoints
from carnet_core.models.checkpoints import save_checkpoint

CLASSES = ["bus", "car", "van"]


def _save(path, arch="mobilenetv2_050", classes=CLASSES, rows=3, name="cars"):
    state = {"classifier.weight": torch.zeros(rows, 8), "classifier.bias": torch.zeros(rows)}
    return save_checkpoint(path, state, {"arch": arch, "head": "linear", "class_names": classes, "name": name})


def test_two_checkpoints_that_would_read_alike_name_their_paths(tmp_path):
    """Two files named "cars" in folders of one name read "★ cars (models)" twice, and a picker loaded the wrong one:
    each now names its path."""
    a = _save(tmp_path / "jobs" / "models" / "cars.safetensors")
    b = _save(tmp_path / "weights" / "models" / "cars.safetensors")
    c = _save(tmp_path / "weights" / "trucks.safetensors", name="trucks")
    entries = {e.path: e for e in list_checkpoints([tmp_path / "jobs", tmp_path / "weights"])}
    assert entries[a].label == "cars (jobs/models/cars.safetensors)"
    assert entries[b].label == "cars (weights/models/cars.safetensors)"
    assert entries[c].label == "trucks (weights)"  # unique already: unchanged
    assert len({e.title for e in entries.values()}) == 3
    run = _save(tmp_path / "jobs" / "run7" / "best-e002-top1-90.0.safetensors", name="lite0-e2")
    save_checkpoint(run, {"classifier.weight": torch.zeros(3, 8), "classifier.bias": torch.zeros(3)},
                    {"arch": "mobilenetv2_050", "head": "linear", "class_names": CLASSES, "name": "lite0-e2",
                     "dataset": "/srv/data/tiny3", "metrics": {"top1": 0.9}})
    [entry] = [e for e in list_checkpoints([tmp_path / "jobs"]) if e.path == run]
    assert entry.title == "lite0-e2 (run7) · linear · 3 classes of tiny3 · top-1 90.0 %"  # the dataset, not only a run


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_used_is_listed_with_the_reason(tmp_path, monkeypatch, cli):
    good = _save(tmp_path / "weights" / "good.safetensors", name="good")
    alien = _save(tmp_path / "weights" / "alien.safetensors", arch="no_such_net_v9", name="alien")
    short = _save(tmp_path / "weights" / "short.safetensors", rows=5, name="short")
    entries = {e.path: e for e in list_checkpoints([tmp_path / "weights"])}
    assert entries[good].problem is None
    assert entries[alien].problem == "architecture 'no_such_net_v9' is not one timm knows"
    assert entries[short].problem == "its classifier has 5 outputs but it names 3 classes"
    assert entries[short].title == "short (weights) · unusable: its classifier has 5 outputs but it names 3 classes"

    monkeypatch.setenv("CARNET_WEIGHTS_DIR", str(tmp_path / "weights"))
    code, out, _ = cli("models")
    assert code == 0 and "★ alien (weights) · unusable: architecture 'no_such_net_v9'" in out
    import ui

    available, missing = ui.available_model_names()
    keys = {k: e for k, e in ui.fine_tuned().items()}
    assert [keys[k].name for k in available if k in keys] == ["good"]
    assert sorted(keys[k].name for k in missing if k in keys) == ["alien", "short"]
    at = AppTest.from_file(str(ROOT / "app_pages" / "0_Home.py"), default_timeout=60).run()
    table = at.dataframe[0].value
    assert not at.exception
    assert table.set_index("model").loc["★ short (weights)", "available"] == "no"
    assert table.set_index("model").loc["★ good (weights)", "available"] == "yes"
