"""NAT discovery messages: the wire format against byte vectors worked out by hand from the
field numbers of Submariner's .proto, against protoc's reading of the .proto we ship, and
hostile datagrams (each must decode or raise MessageError, nothing else)."""

from __future__ import annotations

import contextlib
import importlib.resources
import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from wgcable.natdiscovery import messages
from wgcable.natdiscovery.messages import (
    EndpointDetails,
    IPPort,
    Message,
    MessageError,
    Request,
    Response,
    ResponseType,
    decode,
    encode,
)


def _tag(field: int, wire_type: int) -> str:
    return f"{field << 3 | wire_type:02x}"


VARINT, LEN = 0, 2


def _len(field: int, body: str) -> str:
    """A length-delimited field: tag, one-byte length (all ours are < 128), body."""
    n = len(bytes.fromhex(body))
    assert n < 128
    return _tag(field, LEN) + f"{n:02x}" + body


def _text(s: str) -> str:
    return s.encode().hex()


# By hand: 300 = varint ac 02; 4490 = 8a 23; 61000 = c8 dc 03.
C1E1 = _len(1, _text("c1")) + _len(2, _text("e1"))  # EndpointDetails: cluster_id 1, endpoint_id 2
C2E2 = _len(1, _text("c2")) + _len(2, _text("e2"))
REQUEST_BODY = (
    _tag(1, VARINT) + "ac02"  # request_number = 300
    + _len(2, C1E1)  # sender
    + _len(3, C2E2)  # receiver
    + _len(4, _len(1, _text("10.0.0.1")) + _tag(2, VARINT) + "8a23")  # using_src: IP 1, port 2
    + _len(5, _len(1, _text("192.0.2.1")) + _tag(2, VARINT) + "8a23")  # using_dst
)
REQUEST_WIRE = bytes.fromhex(_tag(1, VARINT) + "01" + _len(2, REQUEST_BODY))  # version 1, request 2
REQUEST = Message(1, Request(300, EndpointDetails("c1", "e1"), EndpointDetails("c2", "e2"),
                             IPPort("10.0.0.1", 4490), IPPort("192.0.2.1", 4490)))

RESPONSE_BODY = (
    _tag(1, VARINT) + "ac02"  # request_number = 300
    + _tag(2, VARINT) + "01"  # response = NAT_DETECTED
    + _len(3, C2E2)  # sender
    + _len(4, C1E1)  # receiver
    + _tag(5, VARINT) + "01"  # src_ip_nat_detected; src_port_nat_detected (6) false: absent
    + _tag(7, VARINT) + "01"  # dst_ip_nat_detected
    + _len(8, _len(1, _text("198.51.100.7")) + _tag(2, VARINT) + "c8dc03")  # received_src
)
RESPONSE_WIRE = bytes.fromhex(_tag(1, VARINT) + "01" + _len(3, RESPONSE_BODY))  # response 3
RESPONSE = Message(1, Response(300, ResponseType.NAT_DETECTED, EndpointDetails("c2", "e2"),
                               EndpointDetails("c1", "e1"), True, False, True,
                               IPPort("198.51.100.7", 61000)))


def test_request_golden_bytes() -> None:
    # The hex literal pins the helpers above too: 58 bytes, as counted by hand.
    assert REQUEST_WIRE.hex() == (
        "08011236" "08ac02" "1208" "0a026331" "12026531" "1a08" "0a026332" "12026532"
        "220d" "0a0831302e302e302e31" "108a23" "2a0e" "0a093139322e302e322e31" "108a23")
    assert encode(REQUEST) == REQUEST_WIRE
    assert decode(REQUEST_WIRE) == REQUEST


def test_response_golden_bytes() -> None:
    assert len(RESPONSE_WIRE) == 53
    assert encode(RESPONSE) == RESPONSE_WIRE
    assert decode(RESPONSE_WIRE) == RESPONSE


def test_submariners_response_has_no_version_and_decodes_as_version_0() -> None:
    # Submariner's responder leaves the version unset: the envelope is the oneof alone.
    wire = bytes.fromhex(_len(3, RESPONSE_BODY))
    assert decode(wire) == Message(0, RESPONSE.body)


def test_zero_values_are_absent_on_the_wire() -> None:
    # proto3: version 0, OK (0), false flags, empty strings and port 0 are not encoded; absent
    # sub-messages stay absent.
    msg = Message(0, Response(0, ResponseType.OK, None, None))
    assert encode(msg) == bytes.fromhex("1a00")
    assert decode(b"\x1a\x00") == msg


def test_absent_sub_messages_decode_to_none_and_empty_ones_do_not() -> None:
    empty_sender = bytes.fromhex(_len(2, _len(2, "")))  # request { sender {} }
    req = decode(empty_sender).body
    assert isinstance(req, Request)
    assert req.sender == EndpointDetails("", "")
    assert (req.receiver, req.using_src, req.using_dst) == (None, None, None)


def test_large_numbers_round_trip() -> None:
    msg = Message(1, Request(2**64 - 1, None, None, IPPort("", 2**32 - 1), None))
    assert decode(encode(msg)) == msg


def test_encode_refuses_out_of_range_numbers() -> None:
    with pytest.raises(MessageError):
        encode(Message(1, Request(2**64, None, None, None, None)))


def test_shipped_proto_is_in_the_package() -> None:
    text = (importlib.resources.files("wgcable.natdiscovery") / "proto"
            / "natdiscovery.proto").read_text()
    assert "message SubmarinerNATDiscoveryMessage" in text


@pytest.mark.skipif(shutil.which("protoc") is None,
                    reason="protoc is not installed (Debian: protobuf-compiler)")
def test_runtime_descriptor_equals_protocs_reading_of_the_shipped_proto(tmp_path: Path) -> None:
    proto_dir = importlib.resources.files("wgcable.natdiscovery") / "proto"
    out = tmp_path / "set.pb"
    subprocess.run(["protoc", f"--proto_path={proto_dir}", f"--descriptor_set_out={out}",
                    messages.PROTO_FILE], check=True, capture_output=True)
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message_type in compiled.message_type:
        for field in message_type.field:
            field.ClearField("json_name")  # protoc fills it; it is not part of the wire format
    assert compiled == messages.file_descriptor()


# --- hostile datagrams -------------------------------------------------------------------------


@pytest.mark.parametrize("cut", range(1, len(REQUEST_WIRE)))
def test_hostile_truncated_request_is_refused(cut: int) -> None:
    # Every cut lands inside the envelope's one length-delimited field (or its header).
    with pytest.raises(MessageError, match=r"not a NAT discovery message|neither"):
        decode(REQUEST_WIRE[:cut])


def test_hostile_garbage_is_refused_without_its_content() -> None:
    with pytest.raises(MessageError) as info:
        decode(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xffsecret")
    assert "secret" not in str(info.value)


def test_hostile_empty_datagram_is_neither_request_nor_response() -> None:
    with pytest.raises(MessageError, match="neither"):
        decode(b"")


def test_hostile_unknown_response_type_is_refused() -> None:
    wire = bytes.fromhex(_len(3, _tag(2, VARINT) + "07"))
    with pytest.raises(MessageError, match="unknown response type 7"):
        decode(wire)


def test_hostile_invalid_utf8_in_a_string_is_refused() -> None:
    wire = bytes.fromhex(_len(2, _len(2, _len(1, "ff fe".replace(" ", "")))))
    with pytest.raises(MessageError):
        decode(wire)


def test_hostile_wrong_wire_type_is_an_unknown_field() -> None:
    # request_number (1) sent length-delimited instead of as a varint: protobuf (Go's too)
    # keeps it as an unknown field, so the number reads 0 (which no request of ours has).
    msg = decode(bytes.fromhex(_len(2, _len(1, "00"))))
    assert msg == Message(0, Request(0, None, None, None, None))


def test_unknown_fields_are_skipped() -> None:
    # A newer peer's extra field (99, varint) does not make the message unreadable.
    extra = bytes.fromhex("f806" "01")
    assert decode(REQUEST_WIRE + extra) == REQUEST


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_hostile_any_bytes_decode_or_raise_message_error(data: bytes) -> None:
    with contextlib.suppress(MessageError):
        decode(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(REQUEST_WIRE) - 1), st.integers(0, 255))
def test_hostile_one_byte_changed_decodes_or_raises_message_error(at: int, value: int) -> None:
    data = bytearray(REQUEST_WIRE)
    data[at] = value
    with contextlib.suppress(MessageError):
        decode(bytes(data))
