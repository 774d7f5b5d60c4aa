"""nftables in-process: libnftables (Debian's libnftables1, installed with nftables) over
ctypes, so that applying or checking our table starts no ``nft`` process (about 10-20 ms
each on a busy host, against well under 1 ms here).

A context's netlink socket belongs to the namespace it was opened in, and libnftables may
open one again; so in another namespace every call, the context's creation included, runs
on a thread that stays there (``NetnsThread``). Contexts are not thread-safe, and the
library keeps some global state: one lock serialises every call into it.

``open_context`` returns None when the library is missing or unusable; the caller then
starts ``nft`` instead (the reason is logged once).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from wgcable.netlink.netns import NetnsThread

log = logging.getLogger(__name__)
T = TypeVar("T")

LIBRARY = "libnftables.so.1"
NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_missing: str | None = None  # why the library cannot be used, once known


def _load() -> ctypes.CDLL | None:
    global _lib, _missing
    if _lib is not None or _missing is not None:
        return _lib
    try:
        lib = ctypes.CDLL(LIBRARY)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.restype = None
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).restype = ctypes.c_int
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).restype = ctypes.c_char_p
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.restype = None
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    except (OSError, AttributeError) as e:
        _missing = str(e)
        log.info("libnftables not usable (%s): nftables changes start the nft command", e)
        return None
    _lib = lib
    return lib


class Context:
    """One libnftables context in one namespace. ``run`` returns (rc, output, error)."""

    def __init__(self, lib: ctypes.CDLL, netns: str | None) -> None:
        self._lib = lib
        self._thread = NetnsThread(netns) if netns else None
        self._ctx: int | None = None
        try:
            self._ctx = self._call(self._new)
        except BaseException:
            self.close()
            raise

    def _call(self, fn: Callable[[], T]) -> T:
        with _lock:
            return self._thread.call(fn) if self._thread is not None else fn()

    def _new(self) -> int:
        ctx = self._lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not ctx:
            raise OSError("nft_ctx_new failed")
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)
        return int(ctx)

    def run(self, command: str, json: bool = False) -> tuple[int, str, str]:
        if self._ctx is None:
            raise RuntimeError("nftables context closed")
        ctx = self._ctx
        data = command.encode()
        if b"\0" in data:  # C reads up to the first NUL: the rest would silently vanish
            raise ValueError("an nftables command with a NUL byte")

        def go() -> tuple[int, str, str]:
            lib = self._lib
            lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON if json else 0)
            rc = lib.nft_run_cmd_from_buffer(ctx, data)
            out = lib.nft_ctx_get_output_buffer(ctx) or b""
            err = lib.nft_ctx_get_error_buffer(ctx) or b""
            return rc, out.decode(errors="replace"), err.decode(errors="replace")
        return self._call(go)

    def close(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            self._call(lambda: self._lib.nft_ctx_free(ctx))
        if self._thread is not None:
            self._thread.close()


def open_context(netns: str | None) -> Context | None:
    """A context acting in ``netns`` (None: here), or None without a usable library."""
    lib = _load()
    if lib is None:
        return None
    return Context(lib, netns)


def missing_reason() -> str | None:
    return _missing


def open_available() -> bool:
    """Whether the library loads (no context is made)."""
    return _load() is not None
