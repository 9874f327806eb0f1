"""The run-folder contract (file names written and read in one place) and model references ("checkpoint:<path>")."""

from pathlib import Path

from carnet_core.models.refs import ModelRef
from carnet_core.models.runs import (
    best_checkpoint,
    best_checkpoints,
    best_epoch,
    best_name,
    best_top1,
    is_run_checkpoint,
    preference,
)


def test_best_names_round_trip():
    name = best_name(7, 0.8125)
    assert name == "best-e007-top1-81.2.safetensors"
    assert best_epoch(Path(name)) == 7 and best_top1(Path(name)) == 81.2
    assert is_run_checkpoint(Path(name)) and is_run_checkpoint(Path("last.safetensors"))
    assert not is_run_checkpoint(Path("efficientnet_b0.safetensors"))


def test_the_best_checkpoint_is_the_highest_top1_and_an_epoch_wins_a_tie_with_the_probe(tmp_path):
    for epoch, top1 in [(0, 0.75), (1, 0.70), (2, 0.75), (3, 0.74)]:
        (tmp_path / best_name(epoch, top1)).write_bytes(b"")
    assert [best_epoch(p) for p in best_checkpoints(tmp_path)] == [2, 0, 3, 1]
    assert best_checkpoint(tmp_path).name == "best-e002-top1-75.0.safetensors"
    assert best_checkpoint(tmp_path / "empty") is None
    # the trainer sorts its candidates by the same key
    assert sorted([(0.75, 0), (0.75, 2), (0.7, 1)], key=lambda t: preference(*t)) == [(0.75, 2), (0.75, 0), (0.7, 1)]


def test_model_refs_parse_once_and_round_trip(tmp_path):
    ckpt = tmp_path / "runs" / "best-e001-top1-90.0.safetensors"
    ref = ModelRef.of_checkpoint(ckpt)
    assert ref.is_checkpoint and ModelRef.parse(ref.key) == ref
    assert ref.load_args() == {"checkpoint": str(ckpt)} and ref.stamp() == 0.0  # missing file
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    assert ref.stamp() == ckpt.stat().st_mtime
    plain = ModelRef.parse("efficientnet_lite0")
    assert not plain.is_checkpoint and plain.key == "efficientnet_lite0"
    assert plain.load_args() == {"name": "efficientnet_lite0"} and plain.stamp() == 0.0


def test_partial_writes_left_by_a_kill_are_removed_and_finished_files_kept(tmp_path):
    """A kill during a write left `.tmp` files in run folders (7 of 9 kills), never cleaned; a run now removes them
    when it starts or resumes."""
    from carnet_core.models.runs import remove_partial_writes

    kept = [tmp_path / "last.safetensors", tmp_path / "last_state.pt", tmp_path / best_name(2, 0.75),
            tmp_path / ".status.json.77.0a1b2c3d.tmp"]  # the app's write of the job's status, in flight: not ours
    left = [tmp_path / ".last_state.pt.123.ab12cd34.tmp", tmp_path / ".best-e003-top1-80.0.safetensors.9.ff.tmp",
            tmp_path / "last_state.pt.tmp"]  # the last: how an earlier version named it
    for path in kept + left:
        path.write_bytes(b"x")
    assert sorted(remove_partial_writes(tmp_path)) == sorted(left)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
