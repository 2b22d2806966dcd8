from __future__ import annotations

import pytest

from tests.moderation.rekognition_standin import Rekognition


@pytest.fixture
def rekognition():
    with Rekognition() as stand_in:
        yield stand_in
