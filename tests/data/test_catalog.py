"""What the dataset pickers offer: datasets under the data root, extracted uploads, built datasets, mapping files."""

import io
import zipfile

import pytest

from carnet_core.data import catalog
from carnet_core.errors import CarNetError


def _classes(root, *names):
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "a.png").write_bytes(b"")
    return root


def test_datasets_under_the_root_then_uploads_then_built_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("CARNET_DATA_ROOT", str(tmp_path))
    assert catalog.dataset_folders(tmp_path / "missing") == []
    _classes(tmp_path / "cars", "sedan", "suv")
    _classes(tmp_path / "bikes" / "train", "road", "mtb")
    _classes(tmp_path / catalog.BUILT / "mine", "red")
    (tmp_path / catalog.UPLOADS / "up-1234" / "zipped").mkdir(parents=True)
    _classes(tmp_path / catalog.UPLOADS / "up-1234" / "zipped", "x", "y")
    names = [p.name for p in catalog.dataset_folders()]
    assert names == ["bikes", "cars", "zipped", "mine"]


def test_a_dataset_and_an_upload_of_one_name_read_apart(tmp_path, monkeypatch):
    """data/tiny3 and an uploaded tiny3.zip were both "tiny3" in every picker."""
    monkeypatch.setenv("CARNET_DATA_ROOT", str(tmp_path))
    _classes(tmp_path / "tiny3", "car", "van")
    _classes(tmp_path / catalog.UPLOADS / "tiny3-0a1b2c3d" / "tiny3", "car", "van")
    _classes(tmp_path / catalog.BUILT / "tiny3", "car", "van")
    labels = [catalog.dataset_label(p) for p in catalog.dataset_folders()]
    assert labels == ["tiny3", "tiny3 (uploaded tiny3.zip)", "tiny3 (built here)"]


def test_a_root_that_is_one_dataset_is_offered_itself(tmp_path):
    _classes(tmp_path, "sedan", "suv")
    assert catalog.dataset_folders(tmp_path) == [tmp_path]


def test_built_dataset_names_are_checked(tmp_path):
    assert catalog.built_dataset("my-cars", tmp_path) == tmp_path / catalog.BUILT / "my-cars"
    with pytest.raises(CarNetError, match="no / or"):
        catalog.built_dataset("../elsewhere", tmp_path)


def test_an_upload_is_extracted_once(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for c in ("red", "blue"):
            z.writestr(f"colours/{c}/1.png", b"not checked here")
    data = buf.getvalue()
    first = catalog.extract_upload("my colours.zip", data, tmp_path)
    assert first.name == "colours" and first.parent.parent == tmp_path / catalog.UPLOADS
    assert first.parent.name.startswith("my_colours-")
    (first / "red" / "1.png").write_bytes(b"changed")
    assert catalog.extract_upload("my colours.zip", data, tmp_path) == first
    assert (first / "red" / "1.png").read_bytes() == b"changed"  # reused, not extracted again


def test_mapping_files_and_the_one_named_after_a_dataset(tmp_path):
    for name in ("tiny_vehicles_6_to_imagenet.json", "cars.csv", "notes.txt"):
        (tmp_path / name).write_text("{}")
    files = catalog.mapping_files(tmp_path)
    assert [f.name for f in files] == ["cars.csv", "tiny_vehicles_6_to_imagenet.json"]
    assert catalog.suggested_mapping(tmp_path / "data" / "tiny_vehicles_6" / "val", files).name.startswith("tiny")
    assert catalog.suggested_mapping(tmp_path / "data" / "other", files) is None
    assert catalog.mapping_files(tmp_path / "missing") == []
