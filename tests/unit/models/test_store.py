"""ModelStore without a server: configuration it refuses before connecting."""

from __future__ import annotations

import pytest

from mulambda.errors import ConfigurationError
from mulambda.models.layout import MIN_PART_SIZE
from mulambda.models.store import ModelStore

pytestmark = pytest.mark.unit


def test_store_refuses_bad_configuration() -> None:
    with pytest.raises(ConfigurationError, match="part_size"):
        ModelStore("h:1", "a", "b", bucket="models", part_size=MIN_PART_SIZE - 1)
    with pytest.raises(ConfigurationError, match="bucket"):
        ModelStore("h:1", "a", "b", bucket="Bad_Bucket")
