"""The live camera: video from the browser's webcam over WebRTC (streamlit-webrtc, which runs each frame through a
callback on the server), each frame classified by :class:`carnet_core.inference.live.LiveClassifier` with its top-5
drawn on the returned frame, and the rate of updates said beside it."""

from __future__ import annotations

import importlib.util
import time

import streamlit as st

from carnet_core.config import ice_servers
from carnet_core.explain.cams import explain
from carnet_core.inference.live import LiveClassifier
from carnet_core.models.classifier import Classifier

#: How often the text beside the video is refreshed while it plays, s.
STATUS_EVERY_S = 0.5


def live_camera_available() -> bool:
    """Whether streamlit-webrtc is installed (the full install has it; the serving tier leaves it, aiortc and PyAV
    out)."""
    try:
        return importlib.util.find_spec("streamlit_webrtc") is not None
    except ImportError:  # an import hook that refuses it
        return False


def live_camera(model: Classifier, key: str, heatmap: bool = False) -> None:
    """The live video with its bars (and a Grad-CAM overlay with ``heatmap``), then a line that follows it: updates
    per second and the top-1 class. The page's script stays in this function while the video plays."""
    from streamlit_webrtc import WebRtcMode, webrtc_streamer  # lazy: aiortc and PyAV load only for the live camera

    classifier = LiveClassifier(model, heatmap=(lambda im: explain(model, im).overlay(0.45)) if heatmap else None)

    def on_frame(frame):
        import av  # lazy: comes with streamlit-webrtc

        return av.VideoFrame.from_ndarray(classifier.process(frame.to_ndarray(format="rgb24")), format="rgb24")

    ctx = webrtc_streamer(key=key, mode=WebRtcMode.SENDRECV, video_frame_callback=on_frame,
                          rtc_configuration={"iceServers": ice_servers()},
                          media_stream_constraints={"video": {"width": 640, "height": 480}, "audio": False},
                          translations={"start": "Start the camera", "stop": "Stop"})
    status = st.empty()
    if not ctx.state.playing:
        status.caption("Press **Start the camera** and allow the browser to use it; the top-5 classes follow the "
                       "picture.")
        return
    while ctx.state.playing:
        latest = classifier.latest()
        if latest is not None:
            status.markdown(f"**{latest.prediction.top1}** {latest.prediction.probabilities[0] * 100:.0f}% · "
                            f"{classifier.rate():.1f} updates/s · {latest.ms:.0f} ms a frame")
        time.sleep(STATUS_EVERY_S)

