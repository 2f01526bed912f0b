"""SavedModelModel without HTTP: version discovery and a load without a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from mulambda.emulator.savedmodel import SavedModelModel, saved_model_versions
from mulambda.errors import ConfigurationError
from mulambda.wire.events import ModelState

pytestmark = pytest.mark.unit


def test_saved_model_versions_follow_the_base_path_layout(tmp_path: Path) -> None:
    for name in ("1", "3", "12", "x7", "latest"):
        (tmp_path / name).mkdir()
    (tmp_path / "20").write_text("a file, not a version folder")
    latest = saved_model_versions(tmp_path)
    assert [(m.version, m.path) for m in latest] == [(12, str(tmp_path / "12"))]
    assert [m.version for m in saved_model_versions(tmp_path, latest_only=False)] == [12, 3, 1]
    assert all(m.state is ModelState.START for m in latest)  # nothing loaded yet
    with pytest.raises(ConfigurationError, match="no numeric version"):
        saved_model_versions(tmp_path / "x7")
    with pytest.raises(ConfigurationError, match="cannot list"):
        saved_model_versions(tmp_path / "missing")


async def test_a_failed_load_ends_the_version_with_the_reason(tmp_path: Path) -> None:
    model = SavedModelModel(tmp_path / "missing", 4)
    await model.load()
    status = model.status()
    assert (status.version, status.state, status.error_code) == (4, ModelState.END, "UNKNOWN")
    assert status.error_message.startswith(f"Loading SavedModel from {tmp_path / 'missing'}")
    assert model.signature_defs() == {}
