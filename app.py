"""CarNet — `streamlit run app.py`. The router: one entry per page; the pages themselves live in home.py and pages/."""

import streamlit as st

st.set_page_config(page_title="CarNet", page_icon="🚗", layout="wide")
st.navigation([
    st.Page("home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/1_Classify.py", title="Classify", icon="🔎"),
    st.Page("pages/2_Explain.py", title="Explain", icon="🔥"),
    st.Page("pages/3_Compare.py", title="Compare", icon="⚖️"),
]).run()
