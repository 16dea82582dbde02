"""The local world leaves no disk images behind: each run's throwaway state holds gigabytes of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from localazure import azurite
from localazure.testing import running
from tests.integration.conftest import small_scenario

pytestmark = pytest.mark.localazure


def test_a_throwaway_state_directory_is_removed_on_stop() -> None:
    with running(small_scenario(), time_scale=0.001) as az:
        directory = az.server.owned_dir
        assert directory is not None and any(directory.iterdir())
    assert not directory.exists()


def test_a_state_directory_given_by_the_caller_is_kept(tmp_path: Path) -> None:
    with running(small_scenario(), time_scale=0.001, state_dir=tmp_path / "state") as az:
        assert az.server.owned_dir is None
    assert any((tmp_path / "state").iterdir())


@pytest.mark.azurite
def test_azurite_removes_only_the_location_it_made(tmp_path: Path) -> None:
    mine = azurite.start()
    location = mine.location
    mine.stop()
    assert not location.exists()
    given = azurite.start(tmp_path / "az")
    given.stop()
    assert (tmp_path / "az" / "azurite.log").exists()
