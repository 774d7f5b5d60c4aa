"""The kernel backend: WireGuard devices of the in-kernel module, over generic netlink."""

from __future__ import annotations

import errno as _errno

from wgcable.netlink import genl, rtnl
from wgcable.netlink import message as nlmsg
from wgcable.netlink.message import DumpInterruptedError, NetlinkError
from wgcable.netlink.netns import call_in_netns
from wgcable.netlink.socket import NETLINK_GENERIC, NETLINK_ROUTE, NetlinkSocket
from wgcable.wgctrl.errors import (
    DeviceNotFoundError,
    InvalidConfigError,
    PermissionDeniedError,
    ProtocolError,
    WgError,
)
from wgcable.wgctrl.kernel import codec
from wgcable.wgctrl.types import BackendKind, Config, Device

LINK_KIND = "wireguard"
DUMP_ATTEMPTS = 5  # a device changing mid-dump marks it inconsistent; read it again

_NOT_FOUND = frozenset({_errno.ENODEV, _errno.EOPNOTSUPP, _errno.ENOENT})
_DENIED = frozenset({_errno.EPERM, _errno.EACCES})
_ATTR_BASE = nlmsg.NLMSG_HDRLEN + nlmsg.GENL_HDRLEN  # ext-ack offsets count from nlmsghdr


def to_wg_error(
    device: str, action: str, err: OSError, request: bytes | None = None, detail: str = ""
) -> WgError:
    """Map a netlink (or socket) error to the library's errors.

    ENODEV/EOPNOTSUPP/ENOENT: no such WireGuard device (EOPNOTSUPP is what the family says
    for a link of another kind). EPERM/EACCES: not allowed. Anything else: ProtocolError,
    naming the attribute the extended ack points at when ``request`` (the attributes sent)
    is given.
    """
    code = abs(err.errno or _errno.EIO)
    ext = err.ext_message if isinstance(err, NetlinkError) else None
    if code in _NOT_FOUND:
        return DeviceNotFoundError(device, ext or "no kernel WireGuard link of that name")
    if code in _DENIED:
        return PermissionDeniedError(device, action)
    key: str | None = None
    if isinstance(err, NetlinkError) and request is not None:
        if err.offset is not None and err.offset >= _ATTR_BASE:
            key = codec.attribute_name_at(request, err.offset - _ATTR_BASE)
        elif err.missing_type is not None:
            nest = err.missing_nest - _ATTR_BASE if err.missing_nest is not None else None
            key = codec.missing_attribute_name(request, err.missing_type, nest)
    text = ext if isinstance(err, NetlinkError) else (err.strerror or str(err))
    parts = [p for p in (text, detail) if p]
    return ProtocolError(device, action, code, key, "; ".join(parts))


class KernelBackend:
    kind = BackendKind.KERNEL

    def __init__(
        self, genl_sock: NetlinkSocket, family_id: int, netns: str | None = None
    ) -> None:
        self._genl = genl_sock
        self._family = family_id
        self._netns = netns
        self._rtnl: NetlinkSocket | None = None

    @classmethod
    def open(cls, netns: str | None = None) -> KernelBackend | None:
        """A backend, or None when the kernel has no ``wireguard`` family (module absent,
        or netlink unavailable in this sandbox). Never loads modules itself.

        ``netns``: an ``ip netns`` name or a path; its devices are controlled instead of
        those of the caller's namespace."""
        try:
            sock = call_in_netns(netns, lambda: NetlinkSocket(NETLINK_GENERIC))
        except OSError:
            return None
        try:
            family = genl.resolve_family(codec.WG_GENL_NAME, sock)
        except (OSError, ValueError):
            family = None
        if family is None:
            sock.close()
            return None
        return cls(sock, family, netns)

    def _route(self) -> NetlinkSocket:
        if self._rtnl is None:
            self._rtnl = call_in_netns(self._netns, lambda: NetlinkSocket(NETLINK_ROUTE))
        return self._rtnl

    def device_names(self) -> list[str]:
        links = rtnl.list_links(self._route())
        return sorted(link.name for link in links if link.kind == LINK_KIND)

    def owns(self, name: str) -> bool:
        link = rtnl.get_link(name, self._route())
        return link is not None and link.kind == LINK_KIND

    def _check_name(self, name: str) -> None:
        try:
            codec.check_ifname(name)
        except InvalidConfigError:
            raise DeviceNotFoundError(name, "not a valid interface name") from None

    def device(self, name: str) -> Device:
        self._check_name(name)
        request = codec.encode_get_device(name)
        payload = nlmsg.pack_genl(codec.WG_CMD_GET_DEVICE, codec.WG_GENL_VERSION, request)
        for attempt in range(DUMP_ATTEMPTS):
            try:
                replies = self._genl.request(self._family, payload, dump=True)
            except DumpInterruptedError as e:
                if attempt + 1 < DUMP_ATTEMPTS:
                    continue
                raise to_wg_error(name, "read", e, request, "device kept changing") from None
            except OSError as e:
                raise to_wg_error(name, "read", e, request) from None
            try:
                parts = [nlmsg.parse_genl(m.payload)[2] for m in replies if m.type == self._family]
            except nlmsg.MessageDecodeError as e:
                raise ProtocolError(name, "read", _errno.EPROTO, None, str(e)) from None
            return codec.decode_get_device(name, parts)
        raise AssertionError("unreachable")  # pragma: no cover

    def configure(self, name: str, config: Config) -> None:
        """Send each SET_DEVICE fragment and check its ack. On a failure, the fragments
        before it stay applied (the kernel applies each message on its own)."""
        self._check_name(name)
        fragments = codec.encode_set_device(name, config)
        for i, request in enumerate(fragments):
            payload = nlmsg.pack_genl(codec.WG_CMD_SET_DEVICE, codec.WG_GENL_VERSION, request)
            try:
                self._genl.request(self._family, payload)
            except OSError as e:
                detail = ""
                if len(fragments) > 1:
                    detail = f"message {i + 1} of {len(fragments)}; earlier ones were applied"
                raise to_wg_error(name, "configure", e, request, detail) from None

    def close(self) -> None:
        self._genl.close()
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None
