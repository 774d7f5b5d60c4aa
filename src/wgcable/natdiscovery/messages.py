"""Submariner's NAT discovery messages: encoding and decoding with the protobuf library.

The descriptor is built here at run time, field for field as in ``proto/natdiscovery.proto``
(shipped beside this module; a test compiles it with protoc and compares the two), so no
generated code is committed. Callers see frozen dataclasses, never protobuf objects.

Presence matters: Submariner answers MALFORMED when a request lacks one of its four
sub-messages, so those decode to None when absent (proto3 tracks presence for messages).
Scalars at their zero value are absent on the wire and decode to 0, "" or False, as in Go.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

VERSION = 1
# Submariner's requests carry version 1; its responses leave the field unset (0). Other
# versions are a protocol we do not know: ignored, never answered.
KNOWN_VERSIONS = frozenset({0, VERSION})
MAX_DATAGRAM = 1024  # bytes; Submariner's largest real message is about 500

PROTO_FILE = "natdiscovery.proto"

_FDP = descriptor_pb2.FieldDescriptorProto


class ResponseType(enum.IntEnum):
    OK = 0
    NAT_DETECTED = 1
    UNKNOWN_DST_CLUSTER = 2
    UNKNOWN_DST_ENDPOINT = 3
    MALFORMED = 4


def family_endpoint_id(endpoint_id: str, version: int) -> str:
    """The endpoint ID as Submariner's dual-stack code puts it on the wire: the cable name
    and the IP family (``<cable>-v4``, ``<cable>-v6``). Its earlier releases used the bare
    cable name; both forms are spoken here."""
    return f"{endpoint_id}-v{version}"


class MessageError(ValueError):
    """A datagram that is not a NAT discovery message we can read. The text never carries
    the datagram's content."""


@dataclass(frozen=True)
class EndpointDetails:
    cluster_id: str
    endpoint_id: str


@dataclass(frozen=True)
class IPPort:
    ip: str
    port: int


@dataclass(frozen=True)
class Request:
    request_number: int
    sender: EndpointDetails | None
    receiver: EndpointDetails | None
    using_src: IPPort | None
    using_dst: IPPort | None


@dataclass(frozen=True)
class Response:
    request_number: int
    response: ResponseType
    sender: EndpointDetails | None
    receiver: EndpointDetails | None
    src_ip_nat_detected: bool = False
    src_port_nat_detected: bool = False
    dst_ip_nat_detected: bool = False
    received_src: IPPort | None = None


@dataclass(frozen=True)
class Message:
    version: int
    body: Request | Response


# --- the descriptor ----------------------------------------------------------------------------


def _field(
    name: str, number: int, kind: int, type_name: str = "", oneof: int | None = None
) -> descriptor_pb2.FieldDescriptorProto:
    field = _FDP(name=name, number=number, label=_FDP.LABEL_OPTIONAL, type=kind)  # type: ignore[arg-type]
    if type_name:
        field.type_name = "." + type_name  # fully qualified; the file has no package
    if oneof is not None:
        field.oneof_index = oneof
    return field


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The descriptor of ``proto/natdiscovery.proto``, built by hand (in its order)."""
    msg, enm = _FDP.TYPE_MESSAGE, _FDP.TYPE_ENUM
    file = descriptor_pb2.FileDescriptorProto(name=PROTO_FILE, syntax="proto3")
    top = file.message_type.add(name="SubmarinerNATDiscoveryMessage")
    top.field.extend([
        _field("version", 1, _FDP.TYPE_INT32),
        _field("request", 2, msg, "SubmarinerNATDiscoveryRequest", oneof=0),
        _field("response", 3, msg, "SubmarinerNATDiscoveryResponse", oneof=0),
    ])
    top.oneof_decl.add(name="message")
    file.message_type.add(name="SubmarinerNATDiscoveryRequest").field.extend([
        _field("request_number", 1, _FDP.TYPE_UINT64),
        _field("sender", 2, msg, "EndpointDetails"),
        _field("receiver", 3, msg, "EndpointDetails"),
        _field("using_src", 4, msg, "IPPortPair"),
        _field("using_dst", 5, msg, "IPPortPair"),
    ])
    kinds = file.enum_type.add(name="ResponseType")
    for kind in ResponseType:
        kinds.value.add(name=kind.name, number=kind.value)
    file.message_type.add(name="SubmarinerNATDiscoveryResponse").field.extend([
        _field("request_number", 1, _FDP.TYPE_UINT64),
        _field("response", 2, enm, "ResponseType"),
        _field("sender", 3, msg, "EndpointDetails"),
        _field("receiver", 4, msg, "EndpointDetails"),
        _field("src_ip_nat_detected", 5, _FDP.TYPE_BOOL),
        _field("src_port_nat_detected", 6, _FDP.TYPE_BOOL),
        _field("dst_ip_nat_detected", 7, _FDP.TYPE_BOOL),
        _field("received_src", 8, msg, "IPPortPair"),
    ])
    file.message_type.add(name="IPPortPair").field.extend([
        _field("IP", 1, _FDP.TYPE_STRING),
        _field("port", 2, _FDP.TYPE_UINT32),
    ])
    file.message_type.add(name="EndpointDetails").field.extend([
        _field("cluster_id", 1, _FDP.TYPE_STRING),
        _field("endpoint_id", 2, _FDP.TYPE_STRING),
    ])
    return file


def _classes() -> dict[str, type[message.Message]]:
    # A pool of our own: the names are Submariner's and have no package, so they must not
    # meet anything else registered in the default pool.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_descriptor())
    names = ("SubmarinerNATDiscoveryMessage", "SubmarinerNATDiscoveryRequest",
             "SubmarinerNATDiscoveryResponse", "IPPortPair", "EndpointDetails")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(n)) for n in names}


_CLASSES = _classes()
_Envelope = _CLASSES["SubmarinerNATDiscoveryMessage"]
_Request = _CLASSES["SubmarinerNATDiscoveryRequest"]
_Response = _CLASSES["SubmarinerNATDiscoveryResponse"]
_IPPort = _CLASSES["IPPortPair"]
_Details = _CLASSES["EndpointDetails"]


# --- encoding ----------------------------------------------------------------------------------


def _details_pb(details: EndpointDetails | None) -> message.Message | None:
    if details is None:
        return None
    return _Details(cluster_id=details.cluster_id, endpoint_id=details.endpoint_id)


def _ipport_pb(pair: IPPort | None) -> message.Message | None:
    return None if pair is None else _IPPort(IP=pair.ip, port=pair.port)


def _present(**fields: Any) -> dict[str, Any]:
    # Absent sub-messages stay absent (None is not a value protobuf takes).
    return {k: v for k, v in fields.items() if v is not None}


def encode(msg: Message) -> bytes:
    """The wire form of ``msg``. Raises MessageError for values protobuf cannot carry (a
    number out of range)."""
    body = msg.body
    try:
        if isinstance(body, Request):
            inner = _Request(**_present(
                request_number=body.request_number,
                sender=_details_pb(body.sender), receiver=_details_pb(body.receiver),
                using_src=_ipport_pb(body.using_src), using_dst=_ipport_pb(body.using_dst)))
            envelope = _Envelope(version=msg.version, request=inner)
        else:
            inner = _Response(**_present(
                request_number=body.request_number, response=int(body.response),
                sender=_details_pb(body.sender), receiver=_details_pb(body.receiver),
                src_ip_nat_detected=body.src_ip_nat_detected,
                src_port_nat_detected=body.src_port_nat_detected,
                dst_ip_nat_detected=body.dst_ip_nat_detected,
                received_src=_ipport_pb(body.received_src)))
            envelope = _Envelope(version=msg.version, response=inner)
        return envelope.SerializeToString(deterministic=True)
    except (ValueError, TypeError, message.EncodeError) as e:
        raise MessageError(f"cannot encode a NAT discovery message: {type(e).__name__}") from None


# --- decoding ----------------------------------------------------------------------------------


def _details(pb: message.Message, name: str) -> EndpointDetails | None:
    if not pb.HasField(name):
        return None
    sub = getattr(pb, name)
    return EndpointDetails(cluster_id=str(sub.cluster_id), endpoint_id=str(sub.endpoint_id))


def _ipport(pb: message.Message, name: str) -> IPPort | None:
    if not pb.HasField(name):
        return None
    sub = getattr(pb, name)
    return IPPort(ip=str(sub.IP), port=int(sub.port))


def decode(data: bytes) -> Message:
    """The message in ``data``. Raises MessageError for what is not one: not protobuf, not
    valid UTF-8 in a string, neither request nor response, an unknown response type."""
    envelope = _Envelope()
    try:
        envelope.ParseFromString(data)
    except (message.DecodeError, ValueError, RuntimeError) as e:
        raise MessageError(f"not a NAT discovery message ({len(data)} bytes, "
                           f"{type(e).__name__})") from None
    version = int(getattr(envelope, "version"))  # noqa: B009 (Message has no typed fields)
    kind = envelope.WhichOneof("message")
    if kind == "request":
        pb = getattr(envelope, "request")  # noqa: B009
        return Message(version, Request(
            request_number=int(pb.request_number),
            sender=_details(pb, "sender"), receiver=_details(pb, "receiver"),
            using_src=_ipport(pb, "using_src"), using_dst=_ipport(pb, "using_dst")))
    if kind == "response":
        pb = getattr(envelope, "response")  # noqa: B009
        number = int(pb.response)
        try:
            response = ResponseType(number)
        except ValueError:  # an open enum: any int32 parses
            raise MessageError(f"unknown response type {number}") from None
        return Message(version, Response(
            request_number=int(pb.request_number), response=response,
            sender=_details(pb, "sender"), receiver=_details(pb, "receiver"),
            src_ip_nat_detected=bool(pb.src_ip_nat_detected),
            src_port_nat_detected=bool(pb.src_port_nat_detected),
            dst_ip_nat_detected=bool(pb.dst_ip_nat_detected),
            received_src=_ipport(pb, "received_src")))
    raise MessageError("a NAT discovery message with neither request nor response")
