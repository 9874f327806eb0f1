"""The sample gallery ships with the product: every photo has its source and the attribution its licence asks for."""

from conftest import ROOT

from carnet_core.data.gallery import credit, credits
from carnet_core.data.images import list_images, load_image

GALLERY = ROOT / "gallery"


def test_every_shipped_photo_is_readable_and_credited():
    photos = list_images(GALLERY)
    assert len(photos) >= 20
    found = credits(GALLERY)
    assert sorted(p.name for p in photos) == sorted(found)  # no photo without a row, no row without a photo
    for photo in photos:
        c = found[photo.name]
        assert c.licence and c.text and c.short and len(c.short) <= 80, photo.name
        assert load_image(photo).size[0] >= 200


def test_what_each_licence_asks_is_what_is_shown():
    rex = credit(GALLERY / "yellow_1962_ferrari_250gt_classic.jpg")  # CC BY: title, author, link, licence, changes
    assert rex.licence == "CC BY 2.0" and rex.short == "by Rex Gray · CC BY 2.0"
    assert rex.text.startswith('"1962 Ferrari 250 GT Berlinetta') and "flickr.com/photos/rexgray" in rex.text
    assert rex.text.endswith("CC BY 2.0; resized")
    taxis = credit(GALLERY / "yellow_taxis_new_york_street.jpg")  # CC0: the suggested credit
    assert taxis.short == taxis.text == "Photo via Pexels (CC0), from IBM MAX-ResNet-50 samples"
    truck = credit(GALLERY / "white_pickup_truck_side.jpg")  # Apache-2.0: its notice
    assert truck.text == "truck.jpg from facebookresearch/sam2 (Apache License 2.0)"


def test_a_folder_without_sources_has_no_credits(tmp_path):
    assert credits(tmp_path) == {} and credit(tmp_path / "x.jpg") is None
    (tmp_path / "SOURCES.md").write_text("# notes\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert credits(tmp_path) == {}
