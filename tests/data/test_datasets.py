"""Dataset readers: class folders (split here or by train/ and val/), Stanford Cars, CompCars, CIFAR-100."""

import os
import pickle
import shutil

import numpy as np
import pytest
from conftest import colour_image

from carnet_core import CarNetError
from carnet_core.data.datacheck import validate_splits
from carnet_core.data.datasets import parse_car_name
from carnet_core.data.published import read_cifar100, read_compcars, read_stanford_cars
from carnet_core.data.readers import open_dataset


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

    from carnet_core.data.datasets import read_labelled_folder

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
    for c in ("red", "green"):  # every class one level down: said as such, not as "holds datasets"
        (data / c / "2019").mkdir()
        for photo in list((data / c).glob("*.png")):
            photo.rename(data / c / "2019" / photo.name)
    with pytest.raises(CarNetError, match="holds no images itself but 24 in its sub-folders"):
        open_dataset(data)


def test_an_empty_class_folder_is_refused_not_trained_as_a_class(colour_folder, tmp_path):
    """An empty class folder was read as a class with no image: trained, never predicted right, and counted in the
    model's classes. It is refused, naming the folder; a val folder empty for one class is not (validate-data says
    that class is small)."""
    import shutil

    data = tmp_path / "colours"
    shutil.copytree(colour_folder, data)
    (data / "purple").mkdir()
    with pytest.raises(CarNetError, match=f"{data / 'purple'} holds no images .*add some, or remove the folder"):
        open_dataset(data)
    split = tmp_path / "split"
    for part in ("train", "val"):
        shutil.copytree(colour_folder, split / part)
    for photo in (split / "val" / "red").iterdir():
        photo.unlink()
    assert open_dataset(split).train.class_names == ("blue", "green", "red")


def test_a_train_folder_alone_is_split_here(colour_folder, tmp_path):
    """data/train/<class>/ with no val/ was read as one class, "train", holding no images, and refused; it is split
    here as class folders are (the same seeded split), and Compare and the pickers treat it as one dataset."""
    import shutil

    from carnet_core.data.datasets import is_one_dataset, labelled_folder

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
    from carnet_core.data.datasets import read_labelled_folder

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


def _save_mat(path, **arrays):
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), arrays)


def test_a_folder_without_a_split_of_its_own_is_scored_whole_by_default(colour_folder, tmp_path):
    """A held-out folder of 549 photos was scored on the 145 of the val split the reader made for training,
    silently. A folder of class folders is now scored whole unless a split is asked for; a dataset with train/ and
    val/ is scored on its val split."""
    from carnet_core.data.datasets import SPLITS
    from carnet_core.evaluation.evaluate import scored_text

    plain = open_dataset(colour_folder)
    assert plain.split_here and plain.default_split == "all" and SPLITS == ("val", "train", "all")
    assert len(plain.part("all")) == plain.num_images == 72 and plain.part("all").items[:54] == plain.train.items
    assert scored_text(72, plain, "all") == "scored 72 of the 72 images found (all of them)"
    assert scored_text(18, plain, "val") == ("scored 18 of the 72 images found (the val split made here: the folder "
                                             "has no split of its own)")
    for split in ("train", "val"):
        shutil.copytree(colour_folder, tmp_path / "split" / split)
    own = open_dataset(tmp_path / "split")
    assert not own.split_here and own.default_split == "val" and own.part("val") is own.val
    assert scored_text(72, own, "val") == "scored 72 of the 144 images found (the val split)"
    with pytest.raises(CarNetError, match="unknown split 'test'; choose val, train, all"):
        own.part("test")


def test_a_spread_sample_takes_the_classes_in_turn():
    from carnet_core.data.datasets import ImageDataset

    items = [("a0", 0), ("a1", 0), ("a2", 0), ("b0", 1), ("c0", 2), ("c1", 2)]
    data = ImageDataset(items, ("a", "b", "c"))
    assert data.spread(4) == ["a0", "b0", "c0", "a1"]
    assert data.spread(100) == ["a0", "b0", "c0", "a1", "c1", "a2"] and data.spread(0) == []
