"""The one scoring pipeline of evaluation and comparison: batches, unreadable images skipped and named."""

import torch
from PIL import Image

from carnet_core.errors import ImageError
from carnet_core.evaluation.scoring import score_images


def test_batches_are_scored_in_order_and_unreadable_images_are_named():
    items = [(f"img{i}.png", i % 3) for i in range(7)]
    seen_batches = []

    def load(i):
        if i == 4:
            raise ImageError("img4.png: not an image")
        return Image.new("RGB", (2, 2), (i, 0, 0))

    def score(images):
        seen_batches.append(len(images))
        return torch.tensor([[float(im.getpixel((0, 0))[0]), 0.0] for im in images])

    done = []
    scored = score_images(items, load, score, batch_size=3, progress=done.append)
    assert seen_batches == [3, 2, 1] and done == [3 / 7, 6 / 7, 1.0]
    assert scored.names == ["img0.png", "img1.png", "img2.png", "img3.png", "img5.png", "img6.png"]
    assert scored.labels.tolist() == [0, 1, 2, 0, 2, 0] and scored.probs[:, 0].tolist() == [0, 1, 2, 3, 5, 6]
    assert scored.unreadable == [("img4.png", "img4.png: not an image")]


def test_members_stack_along_the_batch_dimension_and_nothing_readable_is_none():
    scored = score_images([("a", 0), ("b", 1), ("c", 1)], lambda i: Image.new("RGB", (1, 1)),
                          lambda images: torch.zeros(2, len(images), 4), batch_size=2, dim=1)
    assert scored.probs.shape == (2, 3, 4)
    assert score_images([("a", 0)], lambda i: (_ for _ in ()).throw(ImageError("bad")), lambda ims: None) is None
