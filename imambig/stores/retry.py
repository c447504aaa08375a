"""Object storage that survives transient faults: bounded timeouts, retries, a budget.

An ``s3://`` location reaches its store through :class:`RetryingS3FileSystem`, s3fs with
one more layer on top (``StorageRetryConfig`` in :mod:`imambig.config` has the numbers):

1. botocore retries each HTTP request on 5xx answers, throttling, resets and timeouts
   ("standard" mode: jittered exponential backoff), with connect and read timeouts, so
   an answer held back forever costs one read timeout, not a hung run;
2. s3fs retries each call, and each body read (a reply cut mid-body), a few times;
3. when those give up, this module retries the whole operation with exponential,
   jittered backoff until its attempts or its time budget (counted from the
   operation's start, every wait included) are spent, then raises
   :class:`~imambig.errors.StorageUnavailableError` naming the operation and object.

Only transient faults are retried: a missing object, a refused permission or a failed
precondition (412) is an answer, and passes through at once. Every S3 write imambig
makes is idempotent (whole objects, deterministic bytes) except conditional writes,
whose callers resolve a lost answer themselves (:mod:`imambig.stores.lease`).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import botocore.exceptions
import fsspec
from botocore.parsers import ResponseParserError
from fsspec.asyn import sync_wrapper
from s3fs import S3FileSystem

from imambig.config import StorageRetryConfig
from imambig.errors import StorageUnavailableError

T = TypeVar("T")
PROTOCOLS = ("s3", "s3a")
RETRY_OPTION = "retry"  # the storage option holding StorageRetryConfig fields

# Set while an operation runs under a budget: calls it makes (s3fs's cat_file calls
# get_object) are retried by it, not once more each.
_BUDGETED: contextvars.ContextVar[bool] = contextvars.ContextVar("imambig_budgeted",
                                                                  default=False)
# Errors of the connection or the server, not of the request.
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    botocore.exceptions.HTTPClientError,  # resets, closed connections, read timeouts
    botocore.exceptions.ConnectionError,  # refused or timed-out connections
    ResponseParserError,  # a cut or garbled XML answer
    aiohttp.ClientError,
    TimeoutError,
    ConnectionError,
)
_TRANSIENT_ERRNOS = {errno.EREMOTEIO, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET,
                     errno.ECONNABORTED, errno.EPIPE, errno.EAGAIN}
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "Throttling",
                    "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed"}


def s3_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` (s3fs storage options) with the timeouts and retry settings of their
    ``"retry"`` option (or the defaults) filled in where they do not say otherwise; and
    :class:`RetryingS3FileSystem` registered to open them."""
    register_s3()
    config = StorageRetryConfig.from_options(options.get(RETRY_OPTION))
    opts = dict(options)
    client = dict(opts.get("config_kwargs") or {})
    client.setdefault("connect_timeout", config.connect_timeout_s)
    client.setdefault("read_timeout", config.read_timeout_s)
    client.setdefault("retries", {"mode": "standard",
                                  "total_max_attempts": config.request_attempts})
    opts["config_kwargs"] = client
    return opts


def register_s3() -> None:
    """Make ``s3://`` (and ``s3a://``) URLs open :class:`RetryingS3FileSystem` in this
    process (fsspec's registry; Zarr's stores find it there too)."""
    for protocol in PROTOCOLS:
        if fsspec.get_filesystem_class(protocol) is not RetryingS3FileSystem:
            fsspec.register_implementation(protocol, RetryingS3FileSystem, clobber=True)


def _status(err: BaseException) -> tuple[int | None, str]:
    """The HTTP status and S3 error code of an answer behind ``err``, if any."""
    for e in (err, err.__cause__):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            meta = response.get("ResponseMetadata", {})
            return meta.get("HTTPStatusCode"), str(response.get("Error", {}).get("Code", ""))
    return None, ""


def transient(err: BaseException) -> bool:
    """Whether ``err`` is a fault of the connection or the server, worth retrying (as
    opposed to an answer about the request: missing, forbidden, precondition failed)."""
    if isinstance(err, FileNotFoundError | PermissionError | FileExistsError
                  | IsADirectoryError | NotADirectoryError | botocore.exceptions.SSLError):
        return False
    if isinstance(err, _TRANSIENT_TYPES):
        return True
    status, code = _status(err)
    if status is not None or code:
        return ((status is not None and (status >= 500 or status in (408, 429)))
                or code in _TRANSIENT_CODES)
    return isinstance(err, OSError) and err.errno in _TRANSIENT_ERRNOS


def _describe(method: str, kwargs: dict[str, Any]) -> str:
    bucket = kwargs.get("Bucket", "")
    key = kwargs.get("Key", kwargs.get("Prefix", ""))
    return f"S3 {method} of s3://{bucket}/{key}" if key else f"S3 {method} of s3://{bucket}"


async def persist(config: StorageRetryConfig, what: str,
                  call: Callable[[], Awaitable[T]]) -> T:
    """``await call()``, retried on transient faults with exponential, jittered backoff
    until ``config.attempts`` or ``config.budget_s`` are spent; then
    ``StorageUnavailableError`` naming ``what``. Inside another budgeted operation, one
    plain call (the outer one retries)."""
    if _BUDGETED.get():
        return await call()
    marker = _BUDGETED.set(True)
    try:
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            remaining = start + config.budget_s - time.monotonic()
            try:
                async with asyncio.timeout(max(remaining, 0.0)) as limit:
                    return await call()
            except Exception as err:
                expired = limit.expired() if isinstance(err, TimeoutError) else False
                if not expired and not transient(err):
                    raise
                waited = time.monotonic() - start
                wait = random.uniform(0.5, 1.0) * min(config.max_backoff_s,
                                                      config.backoff_s * 2 ** (attempt - 1))
                if (expired or attempt >= config.attempts
                        or waited + wait >= config.budget_s):
                    last = "the time budget ran out" if expired else (
                        f"{type(err).__name__}: {str(err)[:300]}")
                    raise StorageUnavailableError(
                        f"{what} failed: the object store did not answer within the retry "
                        f"budget ({attempt} attempts in {waited:.1f} s of "
                        f"{config.budget_s:g} s; last: {last}); nothing is lost, run it "
                        "again when the store is reachable") from err
                await asyncio.sleep(wait)
    finally:
        _BUDGETED.reset(marker)


class RetryingS3FileSystem(S3FileSystem):
    """s3fs whose every S3 call and object read is retried within a budget
    (``persist``); takes the storage option ``"retry"`` (``StorageRetryConfig`` fields)
    beside s3fs's own."""

    def __init__(self, *args: Any, retry: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.retry_config = StorageRetryConfig.from_options(retry)
        super().__init__(*args, **kwargs)
        self.retries = self.retry_config.s3fs_retries  # s3fs's class-level setting

    async def _call_s3(self, method: str, *akwarglist: Any, **kwargs: Any) -> Any:
        call = super()._call_s3
        return await persist(self.retry_config, _describe(method, kwargs),
                             lambda: call(method, *akwarglist, **kwargs))

    # s3fs binds the synchronous spelling to its own coroutine; this one must be ours.
    call_s3 = sync_wrapper(_call_s3)

    async def _cat_file(self, path: str, *args: Any, **kwargs: Any) -> bytes:
        # The body is read outside the call (a reply cut mid-body fails here).
        call = super()._cat_file
        return await persist(self.retry_config, f"S3 read of s3://{self._strip_protocol(path)}",
                             lambda: call(path, *args, **kwargs))
