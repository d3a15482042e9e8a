"""Encrypted secrets, one namespace per repository.

A secret ``NAME`` lives at ``.orchestrator/secrets/<repo_id>/NAME.enc`` (files 0600,
directories 0700, written atomically). The file format, all integers big-endian::

    magic "OFSX" | version 1 | algorithm 1 (AES-256-GCM) | key id (8) | salt (16) | nonce (12)
    | ciphertext and 16-byte tag

* namespace key = HKDF-SHA256(master key, info = "orchfs namespace" + repo_id);
* file key = HKDF-SHA256(namespace key, salt, info = "orchfs file"): a fresh random
  salt per write gives a fresh key per write, so a nonce never repeats under a key;
* associated data = the header + length-prefixed repo_id + length-prefixed NFC name,
  so a file moved to another namespace, renamed, truncated or altered fails.

A manifest (``MANIFEST``: name -> version and SHA-256 of the file) is MAC'ed with a key
derived from the namespace key; a deleted secret, or an older valid file put back, is
detected. During a rotation the manifest carries a MAC for the old and the new key and
both file hashes of the secret in flight, so a crash at any point leaves every secret
readable with the old or the new key.

Key sources, first found wins: ``key=``, ``ORCHFS_KEY``, ``ORCHFS_KEY_FILE``, the user
key file (``orchfs secrets init``), the OS keyring (extra ``keyring``; off in web
mode), ``ORCHFS_PASSPHRASE`` (scrypt). No plaintext or key material is ever written
to a log, a ``repr`` or an error message.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import struct
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .atomic import PRIVATE_FILE_MODE
from .errors import (
    ManifestError,
    MetaError,
    OrchFSError,
    SecretIntegrityError,
    SecretsLockedError,
    StateError,
)
from .faults import checkpoint
from .paths import validate_name
from .statefiles import StateFiles
from .stored import load_json, read_state
from .userkey import read_named_key, read_user_key, user_key_path, write_user_key

if TYPE_CHECKING:
    from .storage import Storage

MAGIC = b"OFSX"
VERSION = 1
ALG_AES_256_GCM = 1
KEY_ID_BYTES = 8
SALT_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER = struct.Struct(f">4sBB{KEY_ID_BYTES}s{SALT_BYTES}s{NONCE_BYTES}s")
SECRETS_DIR = "secrets"
MANIFEST = "MANIFEST"
PASSPHRASE_PARAMS = "PASSPHRASE.json"  # noqa: S105 (a file name, not a password)
SUFFIX = ".enc"
SCRYPT_MIN_N = 2**15  # the cost used for writing
SCRYPT_MAX_N = 2**20  # the most a reader accepts
MAX_PARAMS_BYTES = 4096  # PASSPHRASE.json is four short fields
MAX_LEGACY_BYTES = 16 << 20  # a v1 .secrets.enc: an encrypted env file of a few KiB
RESEAL = "`orchfs secrets reseal` (with the key) seals a new manifest from the files the key opens"
_HEX64 = frozenset("0123456789abcdef")


def _hkdf(key: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def _length_prefixed(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def key_id(master: bytes) -> bytes:
    """8 bytes that name a master key without revealing it."""
    return hashlib.sha256(b"orchfs key id\x00" + master).digest()[:KEY_ID_BYTES]


class MasterKey:
    """32 bytes of key material with where they came from; never shown."""

    __slots__ = ("_material", "id", "source")

    def __init__(self, material: bytes, source: str) -> None:
        if len(material) != 32:
            raise SecretsLockedError(f"a key from {source} must be 32 bytes, not {len(material)}")
        self._material = material
        self.id = key_id(material)
        self.source = source

    def __repr__(self) -> str:
        return f"<MasterKey id={self.id.hex()} from {self.source}>"

    def __reduce__(self) -> Any:
        raise TypeError("key material is never pickled; supply the key again where it is needed")

    def namespace_key(self, repo_id: str) -> bytes:
        return _hkdf(self._material, b"orchfs namespace\x00" + repo_id.encode())


def parse_key(value: Any, source: str) -> MasterKey:
    """32 raw bytes, or their url-safe base64 text (as in ORCHFS_KEY and key files)."""
    if isinstance(value, MasterKey):
        return value
    if isinstance(value, (bytes, bytearray)) and len(value) == 32:
        return MasterKey(bytes(value), source)
    try:
        text = value.decode("ascii") if isinstance(value, (bytes, bytearray)) else str(value)
    except UnicodeDecodeError:
        raise SecretsLockedError(
            f"the key from {source} is neither 32 raw bytes nor url-safe base64 text"
        ) from None
    try:
        raw = base64.urlsafe_b64decode(text.strip().encode() + b"=" * (-len(text.strip()) % 4))
    except (ValueError, TypeError):
        raise SecretsLockedError(f"the key from {source} is not url-safe base64 of 32 bytes") from None
    return MasterKey(raw, source)


class KeyReference:
    """What a pickled filesystem carries for its ``key=`` argument: a handle to the key
    held by this process, never the material. An unpickled copy in this process (or a
    forked one) finds the key again; elsewhere the handle resolves to nothing and the copy
    uses the key sources (or is given ``key=`` again)."""

    __slots__ = ("handle",)
    _held: dict[str, Any] = {}  # handle -> the key= value, for this process only

    def __init__(self, handle: str) -> None:
        self.handle = handle

    @classmethod
    def to(cls, key: Any) -> KeyReference:
        handle = hashlib.sha256(b"orchfs key reference\x00" + os.urandom(16)).hexdigest()[:24]
        cls._held[handle] = key
        return cls(handle)

    def resolve(self) -> Any:
        return self._held.get(self.handle)

    def __repr__(self) -> str:
        return f"<KeyReference {self.handle}>"


def new_key_text() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _read_key_file(path: str, source: str) -> MasterKey:
    return parse_key(read_named_key(path, source), f"{source} {path}")


def new_passphrase_params() -> dict[str, Any]:
    """scrypt parameters for a new namespace: never below the minimum cost."""
    wanted = int(os.environ.get("ORCHFS_SCRYPT_N", SCRYPT_MIN_N))
    return {"n": max(wanted, SCRYPT_MIN_N), "r": 8, "p": 1, "salt": os.urandom(16).hex()}


def _passphrase_key(passphrase: str, params: dict[str, Any]) -> MasterKey:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    try:
        n, r, p, salt = int(params["n"]), int(params["r"]), int(params["p"]), bytes.fromhex(params["salt"])
    except (KeyError, TypeError, ValueError, OverflowError):  # JSON's 1e999 is an infinite float
        raise SecretIntegrityError("the passphrase parameters of this namespace are damaged") from None
    # A reader refuses a cost above the maximum (a planted file must not stall it for
    # minutes or exhaust memory), and below the minimum (a planted weak setting).
    if not SCRYPT_MIN_N <= n <= SCRYPT_MAX_N or r != 8 or p != 1:
        raise SecretIntegrityError(
            f"scrypt parameters n={n}, r={r}, p={p} are outside what orchfs accepts "
            f"(n in [{SCRYPT_MIN_N}, {SCRYPT_MAX_N}], r=8, p=1)"
        )
    material = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())
    return MasterKey(material, "ORCHFS_PASSPHRASE")


def find_keys(
    explicit: Any,
    repo_id: str,
    *,
    web_mode: bool = False,
    passphrase_params: Any = new_passphrase_params,
) -> list[MasterKey]:
    """Every available key, in the order of precedence (the first is used for writing)."""
    keys: list[MasterKey] = []
    if explicit is not None:
        for item in explicit if isinstance(explicit, (list, tuple)) else [explicit]:
            keys.append(parse_key(item, "key= argument"))
    if os.environ.get("ORCHFS_KEY"):
        keys.append(parse_key(os.environ["ORCHFS_KEY"], "ORCHFS_KEY"))
    if os.environ.get("ORCHFS_KEY_FILE"):
        keys.append(_read_key_file(os.environ["ORCHFS_KEY_FILE"], "ORCHFS_KEY_FILE"))
    user_file = user_key_path()
    user_text = read_user_key(user_file)
    if user_text is not None:
        keys.append(parse_key(user_text, f"user key file {user_file}"))
    if not web_mode:
        ring = _keyring_key()
        if ring is not None:
            keys.append(ring)
    if os.environ.get("ORCHFS_PASSPHRASE"):
        keys.append(_passphrase_key(os.environ["ORCHFS_PASSPHRASE"], passphrase_params()))
    return keys


def _keyring_key() -> MasterKey | None:
    try:
        import keyring
    except ImportError:
        return None
    try:
        value = keyring.get_password("orchfs", "master-key")
    except Exception:  # a keyring without a backend: treated as absent
        return None
    return parse_key(value, "OS keyring") if value else None


@dataclass(frozen=True)
class Header:
    version: int
    algorithm: int
    key_id: bytes
    salt: bytes
    nonce: bytes


def parse_header(blob: bytes, where: str) -> Header:
    if len(blob) < HEADER.size + TAG_BYTES:
        raise SecretIntegrityError(f"{where} is truncated ({len(blob)} bytes)")
    magic, version, algorithm, kid, salt, nonce = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise SecretIntegrityError(f"{where} is not an orchfs secret (bad magic)")
    if version != VERSION:
        raise SecretIntegrityError(f"{where} has format version {version}; this orchfs reads {VERSION}")
    if algorithm != ALG_AES_256_GCM:
        raise SecretIntegrityError(f"{where} uses unknown algorithm {algorithm}")
    return Header(version, algorithm, kid, salt, nonce)


def _aad(header_bytes: bytes, repo_id: str, name: str) -> bytes:
    name = unicodedata.normalize("NFC", name)
    return header_bytes + _length_prefixed(repo_id.encode()) + _length_prefixed(name.encode())


def encrypt(
    key: MasterKey, repo_id: str, name: str, plaintext: bytes, namespace_key: bytes | None = None
) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt = os.urandom(SALT_BYTES)
    nonce = os.urandom(NONCE_BYTES)
    header = HEADER.pack(MAGIC, VERSION, ALG_AES_256_GCM, key.id, salt, nonce)
    file_key = _hkdf(namespace_key or key.namespace_key(repo_id), b"orchfs file", salt)
    return header + AESGCM(file_key).encrypt(nonce, plaintext, _aad(header, repo_id, name))


def decrypt(
    keys: dict[bytes, tuple[MasterKey, bytes]], repo_id: str, name: str, blob: bytes, where: str
) -> bytes:
    """``keys``: key id -> (key, namespace key)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header = parse_header(blob, where)
    if header.key_id not in keys:
        raise SecretsLockedError(
            f"{where} is encrypted with key id {header.key_id.hex()}, which no available key has; "
            "provide it with key=, ORCHFS_KEY, ORCHFS_KEY_FILE or `orchfs secrets init`"
        )
    _key, namespace = keys[header.key_id]
    file_key = _hkdf(namespace, b"orchfs file", header.salt)
    try:
        return AESGCM(file_key).decrypt(
            header.nonce, blob[HEADER.size :], _aad(blob[: HEADER.size], repo_id, name)
        )
    except InvalidTag:
        raise SecretIntegrityError(
            f"{where} failed its integrity check (altered, truncated, renamed or moved from "
            "another repository)"
        ) from None


class SecretStore:
    """The secret namespace of one repository (``fs.secrets``)."""

    def __init__(
        self,
        state: Storage,
        *,
        repo: Storage,
        initialize: Callable[[], None],
        lock: Callable[[str], contextlib.AbstractContextManager[Any]],
        web_mode: bool = False,
        key: Any = None,
        label: str = "",
    ) -> None:
        """``state`` and ``repo`` are the adapters of the state directory and the root;
        ``initialize`` gives the repository its identity (meta.json) on first write;
        ``lock(name)`` is the repository's lock factory."""
        self._store = state
        self._root_store = repo
        self._initialize = initialize
        self._lock = lock
        self._web_mode = web_mode
        self._label = label
        self._explicit = key
        self._keys: list[MasterKey] | None = None
        self._namespace: dict[bytes, tuple[MasterKey, bytes]] = {}
        self._mac_keys: dict[bytes, bytes] = {}
        self._id: str | None = None

    def __repr__(self) -> str:
        return f"<SecretStore of {self._label!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("a SecretStore holds key material and is never pickled; pickle the filesystem")

    # --- where things are -------------------------------------------------------------
    @property
    def repo_id(self) -> str:
        """The namespace: ``repo_id`` of meta.json (created with it on first use)."""
        if self._id is None:
            from .meta import read_meta

            meta = read_meta(self._store)
            if meta is None:
                self._initialize()
                meta = read_meta(self._store)
            self._id = str(meta["repo_id"])
        return self._id

    def _dir(self) -> str:
        return f"{SECRETS_DIR}/{self.repo_id}"

    def _path(self, name: str) -> str:
        return f"{self._dir()}/{name}{SUFFIX}"

    def _check_name(self, name: str) -> str:
        name = validate_name(name, "secret name")
        if name in (MANIFEST, PASSPHRASE_PARAMS) or name.endswith(SUFFIX):
            raise ValueError(f"{name!r} is reserved; choose another secret name")
        return name

    # --- keys -------------------------------------------------------------------------
    def keys(self) -> list[MasterKey]:
        if self._keys is None:
            self._keys = find_keys(
                self._explicit,
                self.repo_id,
                web_mode=self._web_mode,
                passphrase_params=self._passphrase_params,
            )
        return self._keys

    def stored_info(self, name: str) -> dict[str, Any] | None:
        """What the backend says of the file that holds ``name`` (its times; the size is
        the ciphertext's), or None."""
        return self._store.info(self._path(validate_name(name, "secret name")))

    def url(self, name: str) -> str:
        """Where the file that holds ``name`` is (or would be)."""
        return self._store.url(self._path(validate_name(name, "secret name")))

    def keys_for(self, namespace: str, key: Any = None) -> list[MasterKey]:
        """The keys that ``key`` (else this store's own key sources) gives for another
        namespace, such as that of snapshots."""
        return find_keys(self._explicit if key is None else key, namespace, web_mode=self._web_mode)

    def _passphrase_params(self) -> dict[str, Any]:
        """The namespace's scrypt parameters (created, at the minimum cost, on first use)."""
        rel = f"{self._dir()}/{PASSPHRASE_PARAMS}"
        data = read_state(self._store, rel, MAX_PARAMS_BYTES)
        if data is None:
            params = new_passphrase_params()
            self._write_private(rel, json.dumps(params).encode())
            return params
        try:
            if len(data) > MAX_PARAMS_BYTES:
                raise ValueError("too large")
            return json.loads(data)
        except (ValueError, RecursionError):
            raise SecretIntegrityError("the passphrase parameters of this namespace are damaged") from None

    def where(self) -> str:
        """Which key source is in use (for ``orchfs secrets where``)."""
        keys = self.keys()
        if not keys:
            return (
                "no key available: run `orchfs secrets init`, or set ORCHFS_KEY or ORCHFS_KEY_FILE "
                "(ORCHFS_PASSPHRASE for a passphrase)"
            )
        return f"{keys[0].source} (key id {keys[0].id.hex()})"

    def _writing_key(self) -> MasterKey:
        keys = self.keys()
        if not keys:
            raise SecretsLockedError(
                "no secrets key: set ORCHFS_KEY (url-safe base64 of 32 bytes), ORCHFS_KEY_FILE, "
                "ORCHFS_PASSPHRASE, pass key=, or run `orchfs secrets init`"
            )
        return keys[0]

    def _table(self, extra: list[MasterKey] = ()) -> dict[bytes, tuple[MasterKey, bytes]]:
        repo_id = self.repo_id
        for key in [*self.keys(), *extra]:
            if key.id not in self._namespace:
                self._namespace[key.id] = (key, key.namespace_key(repo_id))
        return self._namespace

    def _mac_key(self, key: MasterKey) -> bytes:
        mac_key = self._mac_keys.get(key.id)
        if mac_key is None:
            namespace = self._table([key])[key.id][1]
            mac_key = self._mac_keys[key.id] = _hkdf(namespace, b"orchfs manifest")
        return mac_key

    # --- the manifest -----------------------------------------------------------------
    def _exists(self) -> bool:
        """Whether the repository has an identity yet (reads never create one). Secret
        files without one mean a lost meta.json, never "no secrets"."""
        if self._id is not None:
            return True
        from .meta import META_FILE, read_meta

        if read_meta(self._store) is not None:
            return True
        stored = self._all_stored()
        if stored:
            where = self._store.url(META_FILE)
            raise MetaError(
                f"{where} is missing but secrets/ holds {len(stored)} encrypted secret(s); restore "
                "meta.json from a backup (its repo_id names their namespace)",
                where,
            )
        return False

    def _all_stored(self) -> list[str]:
        """Secret files of every namespace (``<repo_id>/NAME.enc``), not the v1 import
        source beside them."""
        return [n for n in self._store.find_files(SECRETS_DIR) if n.endswith(SUFFIX) and "/" in n]

    def stored_names(self) -> list[str]:
        """Names of the secret files of the namespace, read from the file names (for when
        the manifest that lists them cannot be opened)."""
        return sorted(n[: -len(SUFFIX)] for n in self._store.find_files(self._dir()) if n.endswith(SUFFIX))

    def _read_manifest(self) -> dict[str, Any]:
        if not self._exists():
            return {"entries": {}, "macs": {}}
        store = self._store
        where = store.url(f"{self._dir()}/{MANIFEST}")
        blob = read_state(store, f"{self._dir()}/{MANIFEST}")
        if blob is None:
            stored = self.stored_names()
            if stored:
                raise ManifestError(
                    f"{where} is missing while {len(stored)} secret file(s) exist; {RESEAL}", where
                )
            elsewhere = self._all_stored()
            if elsewhere:  # a replaced meta.json: its secrets are there, under another repo_id
                from .meta import META_FILE

                meta = self._store.url(META_FILE)
                raise MetaError(
                    f"{meta} names repo_id {self.repo_id}, which holds no secrets, while secrets/ "
                    f"holds {len(elsewhere)} under another repo_id: meta.json was replaced or "
                    "copied; restore it from a backup",
                    meta,
                )
            return {"entries": {}, "macs": {}}
        document = load_json(blob, where, error=ManifestError, fix=RESEAL)
        check_manifest(document, where)
        body = json.dumps(document["entries"], sort_keys=True).encode()
        macs = document["macs"]
        table = self._table()
        checked = False
        for kid_hex, mac in macs.items():
            kid = bytes.fromhex(kid_hex)
            if kid in table:
                expected = hmac.new(self._mac_key(table[kid][0]), body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(expected, mac):
                    raise SecretIntegrityError("the secrets manifest failed its integrity check")
                checked = True
        if macs and not checked:
            raise SecretsLockedError(
                "the secrets manifest is sealed with key id(s) "
                f"{', '.join(sorted(macs))}, which no available key has; provide that key with "
                "key=, ORCHFS_KEY, ORCHFS_KEY_FILE, ORCHFS_PASSPHRASE or `orchfs secrets init`"
            )
        return document

    def _write_manifest(self, entries: dict[str, Any], keys: list[MasterKey]) -> None:
        body = json.dumps(entries, sort_keys=True).encode()
        macs = {k.id.hex(): hmac.new(self._mac_key(k), body, hashlib.sha256).hexdigest() for k in keys}
        document = json.dumps({"entries": entries, "macs": macs}, sort_keys=True, indent=1).encode()
        self._write_private(f"{self._dir()}/{MANIFEST}", document)

    def _write_private(self, rel: str, data: bytes) -> None:
        files = StateFiles(self._store)
        files.makedirs_private(self._dir())
        checkpoint("secrets.write")
        files.write(rel, data, mode=PRIVATE_FILE_MODE)

    # --- the API ----------------------------------------------------------------------
    def set(self, name: str, value: str | bytes) -> None:
        name = self._check_name(name)
        plaintext = value.encode() if isinstance(value, str) else bytes(value)
        key = self._writing_key()
        blob = encrypt(key, self.repo_id, name, plaintext, self._table()[key.id][1])
        with self._lock("secrets"):
            manifest = self._read_manifest()
            entries = manifest["entries"]
            version = entries.get(name, {}).get("version", 0) + 1
            digest = hashlib.sha256(blob).hexdigest()
            seal = self._sealing_keys(manifest, key)
            # The manifest learns the new hash first: a crash before the file lands leaves
            # the old file, still accepted, never a file the manifest refuses.
            pending = dict(entries)
            old = entries.get(name)
            pending[name] = {"version": version, "sha256": digest, "also": [old["sha256"]] if old else []}
            self._write_manifest(pending, seal)
            self._write_private(self._path(name), blob)
            entries[name] = {"version": version, "sha256": digest, "also": []}
            self._write_manifest(entries, seal)

    def _sealing_keys(self, manifest: dict[str, Any], key: MasterKey) -> list[MasterKey]:
        table = self._table()
        keys = [key]
        for kid_hex in manifest.get("macs", {}):
            kid = bytes.fromhex(kid_hex)
            if kid in table and kid != key.id:
                keys.append(table[kid][0])
        return keys

    def get(self, name: str) -> str:
        return self.get_bytes(name).decode()

    def get_bytes(self, name: str) -> bytes:
        name = self._check_name(name)
        manifest = self._read_manifest()
        if not self._exists():
            raise KeyError(f"no secret named {name!r}")
        entry = manifest["entries"].get(name)
        where = f"secret {name!r}"
        try:
            blob = self._store.read(self._path(name))
        except FileNotFoundError:
            if entry is not None:
                raise SecretIntegrityError(f"{where} is in the manifest but its file is gone") from None
            raise KeyError(f"no secret named {name!r}") from None
        if entry is None:
            raise SecretIntegrityError(f"{where} has a file but no manifest entry (planted?)")
        digest = hashlib.sha256(blob).hexdigest()
        if digest != entry["sha256"] and digest not in entry.get("also", []):
            raise SecretIntegrityError(f"{where} is not the version the manifest records (replaced?)")
        if not self.keys():
            parse_header(blob, where)
            raise SecretsLockedError(
                f"{where} is encrypted with key id {blob[6:14].hex()}; no key is available: set "
                "ORCHFS_KEY, ORCHFS_KEY_FILE or ORCHFS_PASSPHRASE, or run `orchfs secrets init`"
            )
        return decrypt(self._table(), self.repo_id, name, blob, where)

    def list(self) -> list[str]:
        return sorted(self._read_manifest()["entries"])

    def reseal(self) -> list[str]:
        """Seal a new manifest from the secret files that an available key opens (after
        the manifest was lost or damaged). Every file must open: one that does not is
        :class:`SecretIntegrityError` and nothing is written. Returns the names."""
        key = self._writing_key()
        with self._lock("secrets"):
            entries = {}
            for name in self.stored_names():
                try:
                    self._check_name(name)
                except ValueError:
                    raise SecretIntegrityError(f"secret file {name!r}{SUFFIX} has a refused name") from None
                blob = self._store.read(self._path(name))
                decrypt(self._table(), self.repo_id, name, blob, f"secret {name!r}")
                entries[name] = {"version": 1, "sha256": hashlib.sha256(blob).hexdigest(), "also": []}
            self._write_manifest(entries, [key])
        return sorted(entries)

    def delete(self, name: str) -> None:
        name = self._check_name(name)
        with self._lock("secrets"):
            manifest = self._read_manifest()
            if name not in manifest["entries"]:
                raise KeyError(f"no secret named {name!r}")
            entries = dict(manifest["entries"])
            del entries[name]
            self._write_manifest(entries, self._sealing_keys(manifest, self._writing_key()))
            with contextlib.suppress(FileNotFoundError):
                StateFiles(self._store).remove(self._path(name))

    def rotate(self, new_key: Any) -> dict[str, Any]:
        """Re-encrypt every secret under ``new_key``; resumable after a crash.

        Returns a report: how many secrets were rewritten, and whether the old key(s)
        are retired (only after a pass proved that nothing needs them).
        """
        new = parse_key(new_key, "new key")
        self._table([new])
        rewritten = 0
        with self._lock("secrets"):
            manifest = self._read_manifest()
            old_keys = [k for k in self._sealing_keys(manifest, self._writing_key()) if k.id != new.id]
            seal = [new, *old_keys]
            entries = manifest["entries"]
            self._write_manifest(entries, seal)  # both keys open the manifest from now on
            for name in sorted(entries):
                blob = self._store.read(self._path(name))
                if parse_header(blob, name).key_id == new.id:
                    continue  # done by an earlier, interrupted run
                plaintext = decrypt(self._table(), self.repo_id, name, blob, f"secret {name!r}")
                fresh = encrypt(new, self.repo_id, name, plaintext, self._table()[new.id][1])
                check = decrypt({new.id: self._table()[new.id]}, self.repo_id, name, fresh, name)
                if check != plaintext:  # never write what the new key cannot read back
                    raise SecretIntegrityError(f"re-encryption of {name!r} did not round-trip")
                entry = entries[name]
                entries[name] = {
                    "version": entry["version"],
                    "sha256": entry["sha256"],
                    "also": [hashlib.sha256(fresh).hexdigest()],
                }
                self._write_manifest(entries, seal)
                self._write_private(self._path(name), fresh)
                entries[name] = {
                    "version": entry["version"] + 1,
                    "sha256": hashlib.sha256(fresh).hexdigest(),
                    "also": [],
                }
                self._write_manifest(entries, seal)
                rewritten += 1
            # The proving pass: every file must now carry the new key id.
            still_old = [
                n
                for n in sorted(entries)
                if parse_header(self._store.read(self._path(n)), n).key_id != new.id
            ]
            retired = not still_old
            self._write_manifest(entries, [new] if retired else seal)
        self._keys = [new, *[k for k in self.keys() if k.id != new.id]]
        return {
            "rewritten": rewritten,
            "key_id": new.id.hex(),
            "retired": [k.id.hex() for k in old_keys] if retired else [],
            "pending": still_old,
        }

    def import_legacy(self, password: str | None = None, path: str | None = None) -> list[str]:
        """Store every entry of the v1 ``.secrets.enc`` (openssl aes-256-cbc -pbkdf2)."""
        where, blob = self._legacy_blob(path)  # first: no password helps when there is no file
        password = password if password is not None else os.environ.get("SECRETS_PASSWORD")
        if not password:
            raise SecretsLockedError("set SECRETS_PASSWORD to the password of the v1 .secrets.enc")
        # Every entry is checked before the first is stored: all of them, or none.
        entries = self._legacy_entries(decrypt_openssl(blob, password), where)
        for name, value in entries.items():
            self.set(name, value)
        return sorted(entries)

    def _legacy_entries(self, mapping: dict[Any, Any], where: str) -> dict[str, str]:
        """The v1 file's entries as secret names and values; a name that is no valid
        secret name, or a value that is no scalar, refuses the whole file."""
        entries: dict[str, str] = {}
        for name, value in mapping.items():
            try:
                checked = self._check_name(str(name))
            except ValueError as exc:  # PathEscapeError too
                raise StateError(
                    f"{where}: the entry {str(name)!r} cannot be a secret name ({exc}); nothing was "
                    "imported: rename it in the v1 file",
                    where,
                ) from None
            if isinstance(value, (dict, list)) or value is None:
                raise StateError(
                    f"{where}: the entry {checked!r} holds a {type(value).__name__}, not a value; "
                    "nothing was imported: give it a plain value in the v1 file",
                    where,
                )
            entries[checked] = str(value)
        return entries

    def _legacy_blob(self, path: str | None) -> tuple[str, bytes]:
        """Which v1 secrets file is imported, and its bytes."""
        if path is not None:
            with open(path, "rb") as f:
                return path, f.read()
        for store, rel in ((self._root_store, ".secrets.enc"), (self._store, "secrets/legacy.enc")):
            data = read_state(store, rel, MAX_LEGACY_BYTES)  # a directory there: StateError
            if data is None:
                continue
            where = store.url(rel)
            if len(data) > MAX_LEGACY_BYTES:
                raise StateError(
                    f"{where} is over the {MAX_LEGACY_BYTES}-byte limit for a v1 secrets file; "
                    "refused unread (is it the file the v1 tool wrote?)",
                    where,
                )
            return where, data
        raise FileNotFoundError("no v1 .secrets.enc in the repository root or .orchestrator/secrets/")


def check_manifest(document: Any, where: str) -> None:
    """The manifest's shape: ``entries`` of valid names -> version and hashes, ``macs`` of
    key ids -> MACs (at least one: orchfs never writes an unsealed manifest)."""

    def damaged(what: str) -> ManifestError:
        return ManifestError(f"{where} is damaged ({what}); {RESEAL}", where)

    if not isinstance(document, dict) or set(document) != {"entries", "macs"}:
        raise damaged("not an object with 'entries' and 'macs'")
    entries, macs = document["entries"], document["macs"]
    if not isinstance(entries, dict) or not isinstance(macs, dict):
        raise damaged("'entries' and 'macs' must be objects")
    if not macs:
        raise ManifestError(f"{where} is not sealed (no MAC): refused; {RESEAL}", where)
    for kid, mac in macs.items():
        if not _is_hex(kid, 2 * KEY_ID_BYTES) or not _is_hex(mac, 64):
            raise damaged("a MAC or key id is not hex")
    for name, entry in entries.items():
        try:
            validate_name(name, "secret name")
        except OrchFSError:
            raise damaged(f"entry {name[:60]!r} is not a valid secret name") from None
        if (
            not isinstance(entry, dict)
            or type(entry.get("version")) is not int
            or not _is_hex(entry.get("sha256"), 64)
            or not isinstance(entry.get("also", []), list)
            or not all(_is_hex(h, 64) for h in entry.get("also", []))
        ):
            raise damaged(f"entry {name!r} is not a version with hashes")


def _is_hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value) <= _HEX64


def decrypt_openssl(blob: bytes, password: str) -> dict[str, Any]:
    """``openssl enc -aes-256-cbc -pbkdf2 -salt`` output -> the YAML mapping inside."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if len(blob) < 32 or not blob.startswith(b"Salted__") or (len(blob) - 16) % 16:
        raise SecretIntegrityError(".secrets.enc is not openssl `enc -salt` output")
    salt = blob[8:16]
    derived = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 10000, 48)
    decryptor = Cipher(algorithms.AES(derived[:32]), modes.CBC(derived[32:])).decryptor()
    padded = decryptor.update(blob[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    from .safeyaml import compose, construct

    try:
        plaintext = unpadder.update(padded) + unpadder.finalize()
        node = compose(plaintext.decode("utf-8"), ".secrets.enc")
    except (ValueError, UnicodeDecodeError):  # ConfigError too: a bomb is no mapping of secrets
        raise SecretIntegrityError(".secrets.enc did not decrypt: wrong SECRETS_PASSWORD?") from None
    mapping = None if node is None else construct(node)
    if not isinstance(mapping, dict):
        raise SecretIntegrityError(".secrets.enc does not hold a YAML mapping")
    return mapping


def init_user_key(path: str | None = None) -> str:
    """Create the user key file (0600, directory 0700); refuse to overwrite one."""
    return write_user_key(new_key_text(), path, exclusive=True)


def install_user_key(key: Any, path: str) -> str:
    """Replace the key file at ``path`` with ``key`` atomically (0600), after a rotation
    retired the key it held; a link there, or a directory that is not the user's own, is
    refused (:mod:`orchfs.userkey`)."""
    text = base64.urlsafe_b64encode(parse_key(key, "new key")._material).decode()
    return write_user_key(text, path, exclusive=False)


__all__ = [
    "SecretStore",
    "init_user_key",
    "install_user_key",
    "new_key_text",
]
