"""CarNet (`streamlit run app.py`): the app's navigation. Each page is a script in ``app_pages/``, listed here in the
sidebar's order with its label, icon and URL (Streamlit's ``st.navigation``). URLs are lower case (``/classify``),
as people type them."""

import streamlit as st

from carnet_core._io import release_free_memory
from carnet_core.config import can_train, hosted_mode, measure_engine_first
from carnet_core.errors import log_unexpected
from carnet_core.inference.selection import measure_in_background
from ui.guard import cap_session_uploads
from ui.models import warm_up_once
from ui.present import presentation_toggle, presenting

# presentation mode (?present=1 or the sidebar toggle) starts with the sidebar folded away
st.set_page_config(page_title="CarNet", page_icon="🚗", layout="wide",
                   initial_sidebar_state="collapsed" if presenting() else "auto")
cap_session_uploads()  # once per process: a session's uploads are bounded (ui/guard.py)
measure_in_background(not measure_engine_first())  # a model's first photos are classified with torch while its fastest engine is measured
warm_up_once()  # the serving tier: its models loaded and timed at start-up, before the first visitor
page = st.navigation([
    st.Page("app_pages/0_Home.py", title="Home", icon=":material/home:", default=True),
    st.Page("app_pages/1_Classify.py", title="Classify", url_path="classify", icon=":material/image_search:"),
    st.Page("app_pages/2_Explain.py", title="Explain", url_path="explain", icon=":material/visibility:"),
    st.Page("app_pages/3_Compare.py", title="Compare", url_path="compare", icon=":material/compare:"),
    *([] if not can_train() else  # a public demo, or the torch-free serving tier: no Fine-tune page at all
      [st.Page("app_pages/4_Fine-tune.py", title="Fine-tune", url_path="fine-tune", icon=":material/model_training:")]),
    st.Page("app_pages/5_Models.py", title="Models", url_path="models", icon=":material/view_list:"),
    st.Page("app_pages/6_Evaluate.py", title="Evaluate", url_path="evaluate", icon=":material/fact_check:"),
])
presentation_toggle()
try:
    page.run()
except Exception as exc:  # a bug (st.stop and reruns are not Exceptions): logged with an id, no traceback for visitors
    error_id = log_unexpected(exc)
    st.error(f"Something went wrong on this page: a fault of CarNet's, not of what you gave it. If it happens again, "
             f"please quote error **{error_id}**.")
    if not hosted_mode():  # on your own machine: the traceback too
        st.exception(exc)
finally:
    release_free_memory()  # what this run freed goes back to the system: a long-running server does not creep up
