"""Secrets: get of a 1 KiB secret (key derivation excluded), and AES-GCM throughput
through the store for 16 MiB against raw ``cryptography`` AESGCM."""

from __future__ import annotations

import base64
import os
import tempfile

import orchfs
from orchfs import secrets as sec

from .harness import Row, Table, ops_per_second, throughput


def run() -> Table:
    table = Table("Secrets (ratios: orchfs / peer)")
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    with tempfile.TemporaryDirectory(prefix="orchfs-bench-") as repo:
        fs = orchfs.OrchFileSystem(root=repo, key=key, skip_instance_cache=True)
        fs.secrets.set("ONE_KIB", os.urandom(1024))
        fs.secrets.get_bytes("ONE_KIB")  # the namespace key is derived once, here
        table.add(
            Row(
                "get, 1 KiB secret",
                "gets/s",
                throughput(lambda: fs.secrets.get_bytes("ONE_KIB"), 5000),
                {"target 20,000/s": 20000.0},
                ("target 20,000/s", 1.0),
            )
        )
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    master = sec.parse_key(key, "bench")
    namespace = master.namespace_key("bench-repo")
    data = os.urandom(16 * 2**20)
    table_keys = {master.id: (master, namespace)}

    def through_store() -> None:
        blob = sec.encrypt(master, "bench-repo", "BIG", data, namespace)
        sec.decrypt(table_keys, "bench-repo", "BIG", blob, "bench")

    raw_key = AESGCM.generate_key(bit_length=256)

    def raw() -> None:
        nonce = os.urandom(12)
        AESGCM(raw_key).decrypt(nonce, AESGCM(raw_key).encrypt(nonce, data, b"aad"), b"aad")

    mib = 16
    store_rate, raw_rate = (rate * mib for rate in ops_per_second([through_store, raw], 3, 3))
    table.add(
        Row(
            "AES-GCM 16 MiB encrypt+decrypt",
            "MiB/s",
            store_rate,
            {"raw AESGCM": raw_rate},
            ("raw AESGCM", 0.5),
        )
    )
    return table
