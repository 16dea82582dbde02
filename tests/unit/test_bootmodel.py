"""The boot model reads /etc/selinux/config the way libselinux does (so it agrees with real boots)."""

from __future__ import annotations

import pytest

from localazure.bootmodel import parse_config


@pytest.mark.parametrize(("text", "expected"), [
    ("SELINUX=enforcing\nSELINUXTYPE=targeted\n", ("enforcing", "targeted")),
    ("SELINUX=enforcing\nSELINUXTYPE=disabled\n", ("enforcing", "disabled")),
    # Case-insensitive prefix match of the value.
    ("SELINUX=Enforcing  \n", ("enforcing", "targeted")),
    ("SELINUX=permissive-ish\n", ("permissive", "targeted")),
    # The first recognised SELINUX= line wins; unrecognised values are skipped, not fatal.
    ("SELINUX=banana\nSELINUX=permissive\nSELINUX=enforcing\n", ("permissive", "targeted")),
    # The tag must start the line and is case-sensitive.
    ("  SELINUX=enforcing\nselinux=enforcing\n", ("other", "targeted")),
    # The type: leading space skipped, tag case-insensitive, last one wins, trailing space stripped.
    ("SELINUX=enforcing\nSELINUXTYPE=mls\n selinuxtype=minimum \n", ("enforcing", "minimum")),
    ("# SELINUXTYPE=mls\nSELINUX=disabled\n", ("disabled", "targeted")),
])
def test_parse_config_follows_libselinux(text: str, expected: tuple[str, str]) -> None:
    assert parse_config(text) == expected
