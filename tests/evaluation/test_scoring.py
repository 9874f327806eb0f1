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


def test_the_next_batch_is_loaded_while_one_is_scored():
    """Loading runs in the worker threads, a batch ahead: while batch 0 is scored, batch 1's images are being
    loaded (the scorer waits for one of them to start, which it could not if loading waited for it). Scoring and
    progress stay in the calling thread. No timing: events only."""
    import threading

    items = [(f"img{i}.png", 0) for i in range(6)]
    started = {i: threading.Event() for i in range(6)}
    loaders, scorers = set(), set()

    def load(i):
        loaders.add(threading.current_thread().name)
        started[i].set()
        return Image.new("RGB", (1, 1))

    batches = []

    def score(images):
        scorers.add(threading.current_thread().name)
        batches.append(len(images))
        if len(batches) == 1:  # batch 0: batch 1 must be loading now, not after this returns
            assert started[3].wait(30), "batch 1 was not loaded while batch 0 was scored"
        return torch.zeros(len(images), 2)

    scored = score_images(items, load, score, batch_size=3, progress=lambda f: scorers.add(
        threading.current_thread().name))
    assert len(scored.names) == 6
    assert scorers == {threading.current_thread().name}
    assert loaders and all(name.startswith("carnet-load") for name in loaders)
    assert not [t for t in threading.enumerate() if t.name.startswith("carnet-load")]  # the pool is shut down


def test_a_failing_score_raises_and_leaves_no_loading_thread():
    import threading

    import pytest

    def score(images):
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError, match="model failed"):
        score_images([(f"{i}", 0) for i in range(100)], lambda i: Image.new("RGB", (1, 1)), score, batch_size=4)
    assert not [t for t in threading.enumerate() if t.name.startswith("carnet-load")]


def test_without_loading_threads_each_batch_is_loaded_at_its_turn():
    """``workers=0`` (Evaluate as it was, and the benchmark's baseline): nothing is loaded ahead of its batch."""
    loaded, at_score = [], []

    def load(i):
        loaded.append(i)
        return Image.new("RGB", (1, 1))

    def score(images):
        at_score.append(len(loaded))
        return torch.zeros(len(images), 2)

    score_images([(f"{i}", 0) for i in range(7)], load, score, batch_size=3, workers=0)
    assert at_score == [3, 6, 7] and loaded == list(range(7))
