"""Settings (read in one place) and atomic writes."""

import json

import pytest

from carnet_core import config
from carnet_core._io import atomic_write, atomic_write_json, read_json
from carnet_core.errors import CarNetError


def test_flags_and_numbers_from_the_environment(monkeypatch):
    for value, expected in [("1", True), ("yes", True), ("ON", True), ("0", False), ("", False)]:
        monkeypatch.setenv("CARNET_HOSTED", value)
        assert config.hosted_mode() is expected
    monkeypatch.setenv("CARNET_CACHE_MAX_MB", "12.5")
    assert config.cache_max_mb() == 12.5
    for bad in ("-1", "lots", "inf"):
        monkeypatch.setenv("CARNET_CACHE_MAX_MB", bad)
        with pytest.raises(CarNetError, match="CARNET_CACHE_MAX_MB must be a number"):
            config.cache_max_mb()
    monkeypatch.setenv("CARNET_ENGINE", "  torch ")
    assert config.forced_engine() == "torch"


@pytest.mark.subprocess
def test_importing_the_settings_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, carnet_core.config, carnet_core; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=config.PROJECT_ROOT)
    assert out.stdout.strip() == "False", out.stderr


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"epoch": 1})

    def crash(tmp):
        tmp.write_text("half a fi")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert read_json(path) == {"epoch": 1} and [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert read_json(tmp_path / "missing.json", "default") == "default"
    (tmp_path / "bad.json").write_text("{not json")
    assert read_json(tmp_path / "bad.json") is None
    assert json.loads(path.read_text()) == {"epoch": 1}
