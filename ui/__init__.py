"""Streamlit building blocks shared by the pages: the model pickers and cached models (:mod:`ui.models`), the
photo inputs (:mod:`ui.photos`), what a session remembers and the slow results cached per process
(:mod:`ui.session`).

Only UI glue lives here — widgets, session state and caching; every decision a test can check without a browser is
in ``carnet_core``.
"""

from ui.grids import PHOTOS_PER_PAGE, photo_grid
from ui.guard import heavy
from ui.hover import MAX_HOVER_THUMBNAILS, hover_thumbnails, show_on_hover
from ui.live import live_camera, live_camera_available
from ui.models import (RANDOM_WEIGHTS, available_model_names, cached_cost, cached_model, class_names_command,
                       device_label, fine_tuned, has_gpu, input_view, measure, model_card, model_or_stop, model_picker,
                       model_title, model_titles, served, weights_status)
from ui.photos import (GALLERY_THUMBNAIL_PX, GALLERY_THUMBNAILS, MAX_PHOTOS, PHOTO_UPLOAD_MB, Photo, digest,
                       gallery_inputs, gallery_thumbnail, image_inputs, photo_caption, photo_credit, sample_title)
from ui.present import PRESENT_CHART_PX, presentation_toggle, presenting, stage, stepper
from ui.session import (EXPLANATIONS_KEPT, classified, dataset_report, epoch_estimate, explanation, first_measurable,
                        keep_result, keep_widget_values, kept_result, public, remembered)

__all__ = ["heavy", "live_camera", "live_camera_available", "PHOTOS_PER_PAGE", "photo_grid", "MAX_HOVER_THUMBNAILS", "hover_thumbnails", "show_on_hover", "RANDOM_WEIGHTS", "available_model_names", "cached_cost", "cached_model", "class_names_command",
           "device_label", "fine_tuned", "has_gpu", "input_view", "measure", "model_card", "model_or_stop",
           "model_picker", "model_title", "model_titles", "served", "weights_status", "GALLERY_THUMBNAIL_PX",
           "GALLERY_THUMBNAILS", "MAX_PHOTOS", "PHOTO_UPLOAD_MB", "Photo", "classified", "digest", "gallery_inputs",
           "gallery_thumbnail", "PRESENT_CHART_PX", "presentation_toggle", "presenting", "stage", "stepper",
           "image_inputs", "photo_caption", "photo_credit", "sample_title", "EXPLANATIONS_KEPT", "dataset_report",
           "epoch_estimate", "explanation", "first_measurable", "keep_result", "keep_widget_values", "kept_result", "public",
           "remembered"]
