"""Real-boot tier: the cached Debian 12 SELinux image under qemu (TCG). Skips, saying why, when qemu cannot run."""

from __future__ import annotations

import pytest

from localazure import images, qemu


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = qemu.unavailable_reason()
    if reason is None:
        return
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=f"real boots cannot run here: {reason}"))


@pytest.fixture(scope="session")
def debian() -> images.DebianImage:
    """The bootable GPT/ext4 Debian 12 SELinux image (built once, then cached across runs)."""
    return images.debian_image()
