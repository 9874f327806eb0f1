"""A hosted demo (``CARNET_HOSTED=1``) shows its visitors no server path, no operator instruction and no traceback:
every page is walked through AppTest with the server's folders under a path that must never appear."""

from __future__ import annotations

import logging
import re

import pytest
from conftest import ROOT, colour_image
from streamlit.testing.v1 import AppTest

SECRET = "SECRET-SERVER-FOLDER"
TEXT_ELEMENTS = ("markdown", "caption", "error", "warning", "info", "success", "code", "text", "exception", "title",
                 "subheader", "header", "metric")
#: Classes named after ImageNet's: every ImageNet model scores them without a mapping.
CLASSES = {"sports car": (200, 40, 40), "pickup": (40, 160, 40), "minivan": (40, 40, 200)}


def shown(at: AppTest) -> list[str]:
    """Every text a visitor can read on the page: elements, table cells, widget labels and options."""
    texts = []
    for kind in TEXT_ELEMENTS:
        for el in at.get(kind):
            texts += [str(getattr(el, a)) for a in ("value", "label", "body", "message") if hasattr(el, a)]
    texts += [el.value.to_string() for el in at.get("dataframe")]
    for kind in ("selectbox", "multiselect", "radio", "button", "download_button", "text_input", "toggle"):
        for el in at.get(kind):
            texts.append(str(el.label))
            texts += [str(o) for o in getattr(el, "options", [])]
    return texts


@pytest.fixture
def server(tmp_path, monkeypatch, lite0):
    """A hosted demo's folders under SECRET: a dataset, a ★ fine-tune whose recipe names them, the gallery."""
    base = tmp_path / SECRET
    for k, (name, rgb) in enumerate(CLASSES.items()):
        (base / "data" / "vehicles" / name).mkdir(parents=True)
        for i in range(4):
            colour_image(rgb, 10 * k + i, size=64).save(base / "data" / "vehicles" / name / f"{i}.png")
    run = base / "jobs" / "run1"
    lite0.save(run / "best-e001-top1-90.0.safetensors", {"top1": 0.9, "epoch": 1}, name="cars",
               dataset=str(base / "data" / "vehicles"), recipe={"data": str(base / "data" / "vehicles"),
                                                               "out": str(run)})
    (base / "weights").mkdir()
    (base / "gallery").mkdir()
    for key, folder in (("DATA_ROOT", "data"), ("WEIGHTS_DIR", "weights"), ("JOBS_DIR", "jobs"),
                        ("GALLERY_DIR", "gallery"), ("CACHE_DIR", "cache")):
        monkeypatch.setenv(f"CARNET_{key}", str(base / folder))
    monkeypatch.setenv("CARNET_HOSTED", "1")
    return base


def no_server_path(at: AppTest, page: str) -> None:
    assert not at.exception, at.exception
    leaks = [t for t in shown(at) if SECRET in t or str(ROOT) in t]
    assert not leaks, f"{page} shows server paths: {leaks}"
    instructions = [t for t in shown(at) if re.search(r"CARNET_|put .* in `|python -m carnet_core export", t)]
    assert not instructions, f"{page} shows operator instructions: {instructions}"


@pytest.mark.slow
def test_no_page_shows_a_server_path_or_an_operator_instruction(server):
    """It did: the weights folder and an export command on Home, the gallery and mappings folders, a dataset's
    path on a Models card, "90 images in /…/data/tv3" on Compare. Pages are walked with a ★ fine-tune and a dataset
    under the server's folders, an empty gallery, and models without weights."""
    for page in ("0_Home", "1_Classify", "2_Explain", "3_Compare", "5_Models", "6_Evaluate"):
        at = AppTest.from_file(str(ROOT / "app_pages" / f"{page}.py"), default_timeout=300).run()
        no_server_path(at, page)
        if page == "0_Home":
            assert not any("Fine-tune" in t for t in shown(at))  # hosted: no training, so not advertised
        if page == "5_Models":
            box = at.selectbox(key="models_pick")
            box.select_index([i for i, o in enumerate(box.options) if o.startswith("★")][0]).run()
            no_server_path(at, "Models (★ card)")
            assert any("Dataset `vehicles`" in t for t in shown(at))
        if page == "6_Evaluate":
            at.button(key="evaluate_run").click().run()
            no_server_path(at, "Evaluate (report)")


def test_a_downloaded_checkpoint_carries_no_server_path(server):
    from carnet_core.models.checkpoints import public_checkpoint

    path = next((server / "jobs").rglob("*.safetensors"))
    assert SECRET.encode() in path.read_bytes()[:200_000]  # the file on the server names its folders
    public = public_checkpoint(path)
    import json
    import safetensors.torch

    size = int.from_bytes(public[:8], "little")  # safetensors: an 8-byte header length, then the JSON header
    meta = json.loads(json.loads(public[8:8 + size])["__metadata__"]["carnet"])
    assert SECRET not in json.dumps(meta) and SECRET.encode() not in public
    assert meta["dataset"] == "vehicles" and meta["recipe"] == {"data": "vehicles", "out": "run1"}

    assert set(safetensors.torch.load(public)) == set(safetensors.torch.load_file(str(path)))


def test_a_bug_is_an_error_id_for_the_visitor_and_a_traceback_in_the_log(server, monkeypatch, caplog):
    from carnet_core.data import catalog

    def broken():
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(catalog, "dataset_folders", broken)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
    with caplog.at_level(logging.ERROR, logger="carnet"):
        at.switch_page("app_pages/6_Evaluate.py").run()
    assert not at.exception  # no traceback on the page
    [message] = [e.value for e in at.error]
    error_id = re.search(r"quote error \*\*([0-9a-f]{8})\*\*", message).group(1)
    [record] = [r for r in caplog.records if error_id in r.getMessage()]
    assert record.exc_info[0] is ZeroDivisionError  # the server's log has what happened
