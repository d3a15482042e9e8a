"""Conditional requests on object storage: the small capability that leases and fencing need.

Every object store orchfs runs a lease on offers the same four things under different
names, and :class:`ConditionalStore` is that common shape:

* ``get(path, limit)`` - the object's bytes with its version (S3/Azure ``ETag``, GCS
  ``generation``) and its age by the *server's* clock (``Date`` minus ``Last-Modified``),
  in one request; with a ``limit``, a ranged read of at most ``limit + 1`` bytes, so that
  an object over the limit (a planted multi-megabyte lease) shows as such without
  being read whole (an empty object, where no range can start, costs a HEAD more);
* ``create(path, data)`` - a write that fails when the object exists (S3 and Azure
  ``If-None-Match: *``, GCS ``ifGenerationMatch=0``);
* ``replace(path, data, version)`` - a write that fails unless the object is still at
  ``version`` (``If-Match`` / ``ifGenerationMatch``);
* ``delete(path, version)`` - the same condition on a delete.

Implemented here: S3 and S3-compatible stores (s3fs), Azure Blob (adlfs), Google Cloud
Storage (gcsfs: ``generation`` and ``ifGenerationMatch``, tested against fake-gcs-server)
and fsspec's memory filesystem.

A failed condition is judged by the HTTP status alone - 412, or 409 for Azure's create
over an existing blob - never by the words of the error body, which differ between AWS,
SeaweedFS, MinIO, Azure and GCS. ``create`` raises :class:`FileExistsError`; ``replace``
and ``delete`` raise :class:`PreconditionFailed`; anything else is the store's own error.

A store that accepts the request but ignores the condition (some GCS emulators do) would
let two holders take one lease: :meth:`ConditionalStore.honours_preconditions` finds that
out with one conditional create over an existing object, which must fail; the lease asks
it once per store and bucket in a process before its first acquisition.

:func:`inject` installs a fault hook in front of every request of this module (the
lease's transport), so tests can fail, delay or pause a renewal without patching
anything: ``with inject(hook): ...`` where ``hook(request)`` may raise or block.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import BucketNotFoundError, PreconditionFailed

PRECONDITION_FAILED = 412
NOT_FOUND = 404
CONFLICT = 409  # Azure: a create (If-None-Match: *) over an existing blob; S3: a racing conditional write
RANGE_NOT_SATISFIABLE = 416  # a ranged read of an empty object: it has no byte 0
PROBE_NAME = "precondition.probe"  # the object the precondition probe creates twice


@dataclass(frozen=True)
class Versioned:
    """An object as one GET saw it."""

    data: bytes
    version: str  # ETag or generation: what replace()/delete() take
    age: float | None  # seconds since it was last written, by the server's clock


@dataclass(frozen=True)
class Head:
    """An object as one HEAD (its metadata alone) saw it."""

    version: str
    size: int
    age: float | None


@dataclass(frozen=True)
class Request:
    """What a fault hook is told about a request before it is sent."""

    op: str  # "get", "create", "replace", "delete"
    url: str


_hooks: list[Callable[[Request], None]] = []
_hooks_lock = threading.Lock()


@contextlib.contextmanager
def inject(hook: Callable[[Request], None]) -> Iterator[None]:
    """Call ``hook`` before every conditional request in this process while the block runs."""
    with _hooks_lock:
        _hooks.append(hook)
    try:
        yield
    finally:
        with _hooks_lock:
            _hooks.remove(hook)


def _before(op: str, url: str) -> None:
    for hook in list(_hooks):
        hook(Request(op, url))


def _status(exc: BaseException) -> int | None:
    """The HTTP status behind an error, looking through the wrappers fsspec backends add."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        response = getattr(current, "response", None)
        if isinstance(response, dict):  # botocore ClientError
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status is not None:
                return int(status)
        status = getattr(current, "status_code", None)  # azure-core HttpResponseError
        if isinstance(status, int):
            return status
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _age(modified: Any, date: str | None) -> float | None:
    if modified is None or not date:
        return None
    from email.utils import parsedate_to_datetime  # leases only: local disk never loads email

    if isinstance(modified, str):  # an HTTP date (Last-Modified) as the answer's headers have it
        modified = parsedate_to_datetime(modified)
    return (parsedate_to_datetime(date) - modified).total_seconds()


class ConditionalStore:
    """The conditional operations of one fsspec filesystem (see the module docstring)."""

    # The statuses that mean "it exists" on a create: 412, and 409 where the store says so.
    exists_statuses: tuple[int, ...] = (PRECONDITION_FAILED, CONFLICT)

    def __init__(self, fs: Any, store: str | None = None) -> None:
        self.fs = fs
        self.store = store  # the storage URL these requests serve, for messages

    def url(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)

    def missing_bucket(self, path: str) -> BucketNotFoundError:
        """The error for a request on ``path`` that found no bucket (or container)."""
        bucket = self.fs.split_path(path)[0]
        return BucketNotFoundError(self.store or self.fs.unstrip_protocol(bucket), bucket)

    def require_bucket(self, path: str) -> None:
        """Raise :class:`BucketNotFoundError` when the bucket (or container) of ``path``
        does not exist (one request). orchfs never creates one: ``makedirs`` of s3fs,
        gcsfs and adlfs would, but a bucket's region, access policy and lifecycle are the
        operator's to choose."""
        bucket = self.fs.split_path(path)[0]
        if not self.fs.exists(bucket):
            raise self.missing_bucket(path)

    @property
    def endpoint(self) -> str:
        """Which server this is (a store's answers hold for all its clients in a process)."""
        return type(self.fs).__name__

    def get(self, path: str, limit: int | None = None) -> Versioned | None:
        """The object (None when there is none); with ``limit``, at most ``limit + 1`` of
        its bytes: more than ``limit`` means the object is larger than that."""
        _before("get", self.url(path))
        return self._get(path, limit)

    def _empty(self, path: str) -> Versioned | None:
        """The object at ``path``, which a ranged read found no byte 0 in: empty, by its
        metadata (one HEAD), or written meanwhile (an error: read it again)."""
        head = self._head(path)
        if head is None:
            return None
        if head.size:
            why = "the object was written while it was read; read it again"
            raise OSError(errno.EAGAIN, why, self.url(path))
        return Versioned(b"", head.version, head.age)

    def create(self, path: str, data: bytes) -> str:
        _before("create", self.url(path))
        try:
            return self._create(path, data)
        except Exception as exc:  # azure-core's errors are not OSErrors: the status decides
            status = _status(exc)
            exists = isinstance(exc, FileExistsError)
            if status in self.exists_statuses or (status is None and exists):
                raise FileExistsError(errno.EEXIST, "file exists", self.url(path)) from None
            if status == NOT_FOUND or isinstance(exc, FileNotFoundError):
                # A create needs no object to be there: only its bucket can be missing.
                raise self.missing_bucket(path) from None
            if exists:  # a client that judged by the body: undo that
                raise OSError(errno.EIO, f"HTTP {status} from the store: {exc}", self.url(path)) from exc
            raise

    def replace(self, path: str, data: bytes, version: str) -> str:
        _before("replace", self.url(path))
        try:
            return self._replace(path, data, version)
        except Exception as exc:
            # Gone (404) is not at that version either: someone deleted it meanwhile.
            if _status(exc) in (PRECONDITION_FAILED, NOT_FOUND) or isinstance(
                exc, (PreconditionFailed, FileNotFoundError)
            ):
                raise PreconditionFailed(self.url(path)) from None
            raise

    def delete(self, path: str, version: str) -> None:
        _before("delete", self.url(path))
        try:
            self._delete(path, version)
        except FileNotFoundError:
            raise PreconditionFailed(self.url(path)) from None
        except Exception as exc:
            if _status(exc) == PRECONDITION_FAILED or isinstance(exc, PreconditionFailed):
                raise PreconditionFailed(self.url(path)) from None
            raise

    def put(self, path: str, data: bytes, version: str | None) -> str:
        """``create`` when ``version`` is None, else ``replace``."""
        return self.create(path, data) if version is None else self.replace(path, data, version)

    def honours_preconditions(self, path: str) -> bool:
        """Whether a create over the existing object at ``path`` fails, as it must.

        The object is created first if it is missing (a create that fails right away
        already answers: one request once the object exists). Its bytes are fixed, so
        a store that wrongly accepts the second create changes nothing."""
        for _ in range(2):
            try:
                self.create(path, b"orchfs precondition probe\n")
            except FileExistsError:
                return True
        return False

    # --- what each store implements --------------------------------------------------
    def _get(self, path: str, limit: int | None) -> Versioned | None:
        raise NotImplementedError

    def _head(self, path: str) -> Head | None:
        raise NotImplementedError

    def _create(self, path: str, data: bytes) -> str:
        raise NotImplementedError

    def _replace(self, path: str, data: bytes, version: str) -> str:
        raise NotImplementedError

    def _delete(self, path: str, version: str) -> None:
        raise NotImplementedError


class S3Conditional(ConditionalStore):
    """S3 and S3-compatible stores through s3fs.

    Writes go through ``pipe_file`` (its keyword arguments reach ``PutObject``:
    ``IfMatch``, and ``mode="create"`` for ``If-None-Match: *``). s3fs has no public
    conditional delete and no read that returns the ETag with the bytes, so those two are
    ``call_s3`` requests, here and nowhere else.
    """

    def _split(self, path: str) -> tuple[str, str]:
        bucket, key, _ = self.fs.split_path(path)
        return bucket, key

    @property
    def endpoint(self) -> str:
        return str(self.fs.client_kwargs.get("endpoint_url") or "s3")

    def _get(self, path: str, limit: int | None) -> Versioned | None:
        from fsspec.asyn import sync

        bucket, key = self._split(path)
        ranged = {} if limit is None else {"Range": f"bytes=0-{limit}"}
        try:
            response = self.fs.call_s3("get_object", Bucket=bucket, Key=key, **ranged)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if ranged and _status(exc) == RANGE_NOT_SATISFIABLE:
                return self._empty(path)
            raise

        async def read() -> bytes:
            async with response["Body"] as stream:
                return await stream.read()

        data = sync(self.fs.loop, read)
        date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        return Versioned(data, response["ETag"], _age(response.get("LastModified"), date))

    def _head(self, path: str) -> Head | None:
        bucket, key = self._split(path)
        try:
            response = self.fs.call_s3("head_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        age = _age(response.get("LastModified"), date)
        return Head(response["ETag"], int(response["ContentLength"]), age)

    def _create(self, path: str, data: bytes) -> str:
        return self.fs.pipe_file(path, data, mode="create")["ETag"]

    def _replace(self, path: str, data: bytes, version: str) -> str:
        return self.fs.pipe_file(path, data, IfMatch=version)["ETag"]

    def _delete(self, path: str, version: str) -> None:
        bucket, key = self._split(path)
        self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=version)
        self.fs.invalidate_cache(path)


class AzureConditional(ConditionalStore):
    """Azure Blob Storage through adlfs's blob service client (azure-storage-blob)."""

    @property
    def endpoint(self) -> str:
        return str(getattr(self.fs, "account_url", None) or self.fs.account_name)

    def _call(self, path: str, action: Callable[[Any], Any]) -> Any:
        from fsspec.asyn import sync

        container, blob, _ = self.fs.split_path(path)

        async def run() -> Any:
            async with self.fs.service_client.get_blob_client(container, blob) as client:
                return await action(client)

        try:
            return sync(self.fs.loop, run)
        finally:
            self.fs.invalidate_cache(path)

    def _get(self, path: str, limit: int | None) -> Versioned | None:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        headers: dict[str, str] = {}

        def keep_date(response: Any) -> None:
            headers["date"] = response.http_response.headers.get("Date", "")

        ranged = {} if limit is None else {"offset": 0, "length": limit + 1}

        async def download(client: Any) -> Versioned:
            stream = await client.download_blob(raw_response_hook=keep_date, **ranged)
            data = await stream.readall()
            props = stream.properties
            return Versioned(data, props.etag, _age(props.last_modified, headers.get("date")))

        try:
            return self._call(path, download)
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            if ranged and exc.status_code == RANGE_NOT_SATISFIABLE:
                return self._empty(path)
            raise

    def _head(self, path: str) -> Head | None:
        from azure.core.exceptions import ResourceNotFoundError

        headers: dict[str, str] = {}

        def keep_date(response: Any) -> None:
            headers["date"] = response.http_response.headers.get("Date", "")

        async def properties(client: Any) -> Head:
            props = await client.get_blob_properties(raw_response_hook=keep_date)
            return Head(props.etag, props.size, _age(props.last_modified, headers.get("date")))

        try:
            return self._call(path, properties)
        except ResourceNotFoundError:
            return None

    def _create(self, path: str, data: bytes) -> str:
        async def upload(client: Any) -> str:
            return (await client.upload_blob(data, overwrite=False))["etag"]

        return self._call(path, upload)

    def _replace(self, path: str, data: bytes, version: str) -> str:
        from azure.core import MatchConditions

        async def upload(client: Any) -> str:
            result = await client.upload_blob(
                data, overwrite=True, etag=version, match_condition=MatchConditions.IfNotModified
            )
            return result["etag"]

        return self._call(path, upload)

    def _delete(self, path: str, version: str) -> None:
        from azure.core import MatchConditions

        async def delete(client: Any) -> None:
            await client.delete_blob(etag=version, match_condition=MatchConditions.IfNotModified)

        self._call(path, delete)


class GCSConditional(ConditionalStore):
    """Google Cloud Storage through gcsfs: the version is the object's ``generation``.

    ``create`` is ``ifGenerationMatch=0``, ``replace`` and ``delete`` are
    ``ifGenerationMatch=<generation>``. Every write is one multipart upload (metadata and
    bytes in one request, whatever the size): the upload on which GCS-API servers honour
    preconditions, and no window between the parts of a resumable upload. gcsfs reports a
    412 as :class:`FileExistsError` and a 404 as :class:`FileNotFoundError` from the
    status alone; its other HTTP errors become :class:`OSError` here. Their ``code`` is
    not read: gcsfs takes it from the error body when the body has one. A 409 is no
    precondition failure on GCS.

    gcsfs retries 5xx answers itself; a retried create or replace whose first attempt
    was applied then answers 412, which the lease reads as "held" or "lost": it waits
    for the lease to expire, or stops writing - never two holders.
    """

    exists_statuses = (PRECONDITION_FAILED,)

    def _split(self, path: str) -> tuple[str, str]:
        bucket, key, _ = self.fs.split_path(path)
        return bucket, key

    @property
    def endpoint(self) -> str:
        # gcsfs's JSON-API host (Google's unless endpoint_url), from its public API base.
        return str(self.fs.base).removesuffix("/storage/v1/")

    def _call(self, path: str, method: str, target: str, *args: str, **params: Any) -> Any:
        from gcsfs.retry import HttpError

        try:
            return self.fs.call(method, target, *args, **params)
        except HttpError as exc:  # not 412 or 404: gcsfs raises those as OSErrors, by status
            message = f"the store refused the request: {exc.message}"
            raise OSError(errno.EIO, message, self.url(path)) from exc

    def _get(self, path: str, limit: int | None) -> Versioned | None:
        bucket, key = self._split(path)
        ranged = {} if limit is None else {"headers": {"Range": f"bytes=0-{limit}"}}
        try:
            headers, data = self._call(path, "GET", "b/{}/o/{}", bucket, key, alt="media", **ranged)
        except FileNotFoundError:
            return None
        except OSError as exc:  # the HttpError's code: a status gcsfs does not raise by itself
            if ranged and getattr(exc.__cause__, "code", None) == RANGE_NOT_SATISFIABLE:
                return self._empty(path)
            raise
        generation = headers.get("X-Goog-Generation")
        if not generation:
            raise OSError(
                errno.EPROTO,
                "the store's answer has no X-Goog-Generation header: it is no GCS-API server "
                "orchfs can hold a lease on",
                self.url(path),
            )
        return Versioned(data, generation, _age(headers.get("Last-Modified"), headers.get("Date")))

    def _head(self, path: str) -> Head | None:
        import json
        from datetime import datetime

        bucket, key = self._split(path)
        try:
            headers, body = self._call(path, "GET", "b/{}/o/{}", bucket, key)  # the metadata
        except FileNotFoundError:
            return None
        record = json.loads(body)
        updated = record.get("updated")
        modified = datetime.fromisoformat(updated.replace("Z", "+00:00")) if updated else None
        age = _age(modified, headers.get("Date"))
        return Head(str(record["generation"]), int(record.get("size", 0)), age)

    def _upload(self, path: str, data: bytes, generation: str) -> str:
        import json
        import secrets
        from urllib.parse import quote

        bucket, key = self._split(path)
        boundary = secrets.token_hex(16)  # never found in the bytes by chance
        head = (
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
            f"{json.dumps({'name': key})}\r\n"
            f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
        try:
            answer = self._call(
                path,
                "POST",
                # The upload endpoint beside the JSON API's (gcsfs's own uploads use it too).
                f"{self.endpoint}/upload/storage/v1/b/{quote(bucket, safe='')}/o",
                uploadType="multipart",
                ifGenerationMatch=generation,
                headers={"Content-Type": f'multipart/related; boundary="{boundary}"'},
                data=body,
                json_out=True,
            )
        finally:
            self.fs.invalidate_cache(path)
        return str(answer["generation"])

    def _create(self, path: str, data: bytes) -> str:
        return self._upload(path, data, "0")

    def _replace(self, path: str, data: bytes, version: str) -> str:
        try:
            return self._upload(path, data, version)
        except FileExistsError:  # gcsfs's name for a 412
            raise PreconditionFailed(self.url(path)) from None

    def _delete(self, path: str, version: str) -> None:
        bucket, key = self._split(path)
        try:
            self._call(path, "DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=version)
        except FileExistsError:  # gcsfs's name for a 412
            raise PreconditionFailed(self.url(path)) from None
        finally:
            self.fs.invalidate_cache(path)


_memory_lock = threading.Lock()
_memory_stamps: dict[str, tuple[int, float]] = {}  # path -> (writes so far, when)


class MemoryConditional(ConditionalStore):
    """fsspec's in-process ``MemoryFileSystem``: versions counted here, under one lock."""

    def require_bucket(self, path: str) -> None:
        """Memory has no buckets: there is nothing to require."""

    def _version(self, path: str, data: bytes) -> str:
        count = _memory_stamps.get(path, (0, 0.0))[0]
        # The bytes are part of the version, so a write that bypassed this class is noticed.
        return f"{count}-{hashlib.sha256(data).hexdigest()[:16]}"

    def _read(self, path: str) -> bytes | None:
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None

    def _write(self, path: str, data: bytes) -> str:
        self.fs.makedirs(path.rpartition("/")[0], exist_ok=True)
        self.fs.pipe_file(path, data)
        count = _memory_stamps.get(path, (0, 0.0))[0] + 1
        _memory_stamps[path] = (count, time.time())
        return self._version(path, data)

    def _get(self, path: str, limit: int | None) -> Versioned | None:
        with _memory_lock:
            data = self._read(path)
            if data is None:
                return None
            when = _memory_stamps.get(path, (0, time.time()))[1]
            shown = data if limit is None else data[: limit + 1]  # in this process: nothing to save
            return Versioned(shown, self._version(path, data), time.time() - when)

    def _create(self, path: str, data: bytes) -> str:
        with _memory_lock:
            if self._read(path) is not None:
                raise FileExistsError(errno.EEXIST, "file exists", path)
            return self._write(path, data)

    def _replace(self, path: str, data: bytes, version: str) -> str:
        with _memory_lock:
            current = self._read(path)
            if current is None or self._version(path, current) != version:
                raise PreconditionFailed(self.url(path))
            return self._write(path, data)

    def _delete(self, path: str, version: str) -> None:
        with _memory_lock:
            current = self._read(path)
            if current is None or self._version(path, current) != version:
                raise PreconditionFailed(self.url(path))
            self.fs.rm_file(path)
            _memory_stamps.pop(path, None)


_BY_PROTOCOL: dict[str, type[ConditionalStore]] = {
    "s3": S3Conditional,
    "s3a": S3Conditional,
    "abfs": AzureConditional,
    "az": AzureConditional,
    "gs": GCSConditional,
    "gcs": GCSConditional,
    "memory": MemoryConditional,
}


def for_filesystem(fs: Any, store: str | None = None) -> ConditionalStore | None:
    """The conditional capability of an fsspec filesystem, or None if orchfs has none for
    it; ``store`` is the storage URL that its errors name."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    for protocol in protocols:
        cls = _BY_PROTOCOL.get(protocol)
        if cls is not None:
            return cls(fs, store)
    return None


__all__ = [
    "PROBE_NAME",
    "AzureConditional",
    "ConditionalStore",
    "GCSConditional",
    "Head",
    "MemoryConditional",
    "Request",
    "S3Conditional",
    "Versioned",
    "for_filesystem",
    "inject",
]
