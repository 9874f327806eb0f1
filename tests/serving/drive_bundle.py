"""Drive a serving bundle's pages through Streamlit's AppTest, in a process where PyTorch (and every other
full-install-only package) cannot be imported; print what the pages showed as one JSON line.

Run by tests/serving/test_serving_tier.py as ``python drive_bundle.py BUNDLE_DIR`` with ``PYTHONPATH`` holding the
import blocker (``block_full_install/sitecustomize.py``) and the bundle.
"""

import json
import sys
from pathlib import Path

from streamlit.testing.v1 import AppTest

bundle = Path(sys.argv[1]).resolve()
TIMEOUT = 120
seen: dict = {"pages": {}, "texts": []}


def texts(at) -> list[str]:
    found = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "title", "subheader", "text"):
        found += [str(getattr(el, "value", "")) for el in at.get(kind)]
    return found


def record(name: str, at) -> dict:
    page = {"exceptions": [str(e.value) for e in at.exception], "texts": texts(at),
            "images": [c for el in at.get("image") for c in el.captions],
            "bars": [json.loads(c.proto.spec)["data"][0]["y"] for c in at.get("plotly_chart")
                     if json.loads(c.proto.spec)["data"][0].get("type") == "bar"]}
    seen["pages"][name] = page
    seen["texts"] += page["texts"]
    return page


at = AppTest.from_file(str(bundle / "app.py"), default_timeout=TIMEOUT).run()
record("home", at)
seen["navigation"] = [p.url_path for p in at.session_state["_pages"]] if "_pages" in at.session_state else None
gallery = sorted(p.name for p in (bundle / "gallery").glob("*.jpg"))

at.switch_page("app_pages/1_Classify.py").run()
at.multiselect(key="classify_gallery").set_value(gallery[:3]).run()
record("classify", at)["toggles"] = [t.label for t in at.toggle]
similar = at.selectbox(key="classify_similar_folder")  # the photos of a dataset most like each photo
similar.set_value(similar.options[0]).run()
record("classify_similar", at)

at.switch_page("app_pages/2_Explain.py").run()
at.multiselect(key="explain_gallery").set_value(gallery[:1]).run()
page = record("explain", at)
page["methods"] = list(at.selectbox(key="explain_method").options)
page["layers"] = list(at.selectbox(key="explain_layer").options)

at.switch_page("app_pages/3_Compare.py").run()
at.multiselect(key="compare_gallery").set_value(gallery[:1]).run()
at.button(key="compare_run").click().run()  # the two models and their ensembles on the labelled folder
page = record("compare", at)
page["tables"] = [t.value.to_dict("records") for t in at.dataframe]

at.switch_page("app_pages/5_Models.py").run()
record("models", at)
at.switch_page("app_pages/6_Evaluate.py").run()
at.button(key="evaluate_run").click().run()
page = record("evaluate", at)
page["metrics"] = {m.label: m.value for m in at.metric}
page["tabs"] = [t.label for t in at.tabs]

seen["torch_imported"] = "torch" in sys.modules
seen["full_install_modules"] = sorted({m.split(".")[0] for m in sys.modules} & {
    "torch", "torchvision", "timm", "pytorch_grad_cam", "lightning", "lightning_fabric", "cv2", "sklearn"})
print(json.dumps(seen))
