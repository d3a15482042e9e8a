"""Every storage adapter implements ``storage.Storage``, member for member."""

from __future__ import annotations

import inspect
import uuid

import pytest

from orchfs.storage import Capabilities, Storage, open_storage


def _protocol_members() -> dict[str, inspect.Signature | None]:
    members: dict[str, inspect.Signature | None] = {}
    for name, value in vars(Storage).items():
        if name.startswith("_"):
            continue
        members[name] = inspect.signature(value) if callable(value) else None
    for name in Storage.__annotations__:
        members.setdefault(name, None)
    return members


@pytest.fixture(params=["local", "memory"])
def adapter(request, tmp_path):
    if request.param == "local":
        return open_storage(str(tmp_path), None)
    return open_storage(f"memory://storage-interface-{uuid.uuid4().hex}", None)


def test_adapter_has_every_member_of_the_protocol(adapter):
    members = _protocol_members()
    assert {"read", "write", "scan", "capabilities", "kind"} <= set(members)
    for name, signature in members.items():
        assert hasattr(adapter, name), f"{type(adapter).__name__} lacks {name}"
        if signature is None:
            continue
        own = inspect.signature(getattr(type(adapter), name))
        assert list(own.parameters) == list(signature.parameters), f"{type(adapter).__name__}.{name}"
    assert isinstance(adapter.capabilities, Capabilities)


def test_choices_are_made_on_capabilities(adapter):
    # The memory backend keeps empty directories, as local disk does; a write creates
    # the parents it needs there, whatever the adapter's kind.
    adapter.write("a/b/c.json", b"{}")
    assert adapter.read("a/b/c.json") == b"{}"
    listing = adapter.scan("a/b")
    assert [name for name, _info in listing.children] == ["c.json"]
    assert listing.markers == []
    assert adapter.capabilities.empty_directories
