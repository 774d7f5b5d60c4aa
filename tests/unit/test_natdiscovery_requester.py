"""The NAT discovery requester's state machine for one remote, with a hand-moved clock:
when it probes, which answers count, and what it chooses."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from wgcable.natdiscovery.messages import EndpointDetails, IPPort, Response, ResponseType
from wgcable.natdiscovery.requester import Fallback, Path, ProbeSend, TargetProbe, Verdict
from wgcable.natdiscovery.types import HOW_DISCOVERED, Choice, Target, Timings

US = EndpointDetails("east", "cable-east")  # bare, as the service passes it
US4 = EndpointDetails("east", "cable-east-v4")  # as it goes on the wire to an IPv4 address
THEM4 = EndpointDetails("west", "cable-west-v4")
PRIVATE, PUBLIC, PORT = "10.1.0.1", "198.51.100.1", 4490
TARGET = Target("west", "cable-west", PRIVATE, PUBLIC, PORT, nat_enabled=True)
TIMINGS = Timings()


def _addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def _numbers() -> Iterator[int]:
    n = 1000
    while True:
        n += 1
        yield n


def _probe(target: Target = TARGET, *, timings: Timings = TIMINGS,
           versions: tuple[int, ...] = (4, 6)) -> TargetProbe:
    numbers = _numbers()
    return TargetProbe(target, 0.0, timings=timings, versions=versions,
                       new_number=lambda: next(numbers))


def _by_path(sends: list[ProbeSend]) -> dict[Path, ProbeSend]:
    return {s.path: s for s in sends}


def _reply(send: ProbeSend, kind: ResponseType = ResponseType.OK, *,
           sender: EndpointDetails | None = None, receiver: EndpointDetails | None = None,
           number: int | None = None) -> Response:
    """The remote's answer to ``send``: from whom it was addressed to, to whom sent it."""
    return Response(send.request_number if number is None else number, kind,
                    sender or send.receiver, receiver or send.sender,
                    received_src=IPPort("10.0.0.1", PORT))


def _from(send: ProbeSend) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    return (send.address, send.port)


def test_first_poll_probes_private_and_public() -> None:
    probe = _probe()
    sends = probe.poll(0.0, US)
    assert [(s.path, str(s.address), s.port, s.sender, s.receiver) for s in sends] == [
        (Path.PRIVATE, PRIVATE, PORT, US4, THEM4), (Path.PUBLIC, PUBLIC, PORT, US4, THEM4)]
    assert sends[0].request_number != sends[1].request_number
    assert probe.poll(0.0, US) == []  # nothing more is due at once
    assert probe.next_deadline() == 0.5


def test_resends_back_off_to_every_2_s() -> None:
    probe = _probe()
    times = []
    now = 0.0
    while now < 8.0:
        if probe.poll(now, US):
            times.append(now)
        deadline = probe.next_deadline()
        assert deadline is not None
        now = deadline
    assert times == [0.0, 0.5, 1.5, 3.5, 5.5, 7.5]


def test_private_answer_wins_at_once() -> None:
    probe = _probe()
    sends = _by_path(probe.poll(0.0, US))
    verdict = probe.on_response(_reply(sends[Path.PRIVATE]), _from(sends[Path.PRIVATE]), 0.012)
    assert verdict is Verdict.ACCEPTED
    assert probe.decision == Choice(PRIVATE, False, HOW_DISCOVERED,
                                    f"private {PRIVATE} answered in 12 ms")
    assert probe.next_deadline() is None
    assert probe.poll(5.0, US) == []


def test_public_answer_is_held_for_the_private_window() -> None:
    probe = _probe()
    sends = _by_path(probe.poll(0.0, US))
    public = sends[Path.PUBLIC]
    assert probe.on_response(_reply(public, ResponseType.NAT_DETECTED), _from(public),
                             0.02) is Verdict.HELD
    assert probe.decision is None
    probe.poll(1.0, US)  # the window ends at 1.02
    assert probe.decision is None
    assert probe.next_deadline() == pytest.approx(1.02)
    probe.poll(1.02, US)
    assert probe.decision == Choice(
        PUBLIC, True, HOW_DISCOVERED,
        f"public {PUBLIC} answered in 20 ms, NAT detected; private {PRIVATE} did not answer "
        "within 1 s")


def test_private_answer_within_the_window_after_a_public_one_wins() -> None:
    probe = _probe()
    first = _by_path(probe.poll(0.0, US))
    probe.on_response(_reply(first[Path.PUBLIC]), _from(first[Path.PUBLIC]), 0.01)
    # The first private probe was lost; its resend at 0.5 s answers.
    resent = _by_path(probe.poll(0.5, US))
    assert list(resent) == [Path.PRIVATE]  # the public address answered: not probed again
    assert probe.on_response(_reply(resent[Path.PRIVATE]), _from(resent[Path.PRIVATE]),
                             0.51) is Verdict.ACCEPTED
    decision = probe.take_decision()
    assert isinstance(decision, Choice)
    assert decision.use_ip == PRIVATE
    assert probe.take_decision() is None  # one decision, taken once


def test_an_answer_to_an_earlier_probe_still_counts() -> None:
    probe = _probe()
    first = _by_path(probe.poll(0.0, US))
    probe.poll(0.5, US)  # resent
    late = first[Path.PRIVATE]
    assert probe.on_response(_reply(late), _from(late), 0.7) is Verdict.ACCEPTED
    assert isinstance(probe.decision, Choice)
    assert probe.decision.detail == f"private {PRIVATE} answered in 700 ms"


def test_nat_detected_on_the_private_path_means_use_nat() -> None:
    probe = _probe()
    private = _by_path(probe.poll(0.0, US))[Path.PRIVATE]
    probe.on_response(_reply(private, ResponseType.NAT_DETECTED), _from(private), 0.001)
    assert isinstance(probe.decision, Choice)
    assert probe.decision.use_nat


def test_timeout_falls_back_to_the_static_rule() -> None:
    probe = _probe()
    now = 0.0
    while probe.decision is None:
        probe.poll(now, US)
        deadline = probe.next_deadline()
        assert deadline is None or deadline <= 60.0
        now = deadline if deadline is not None else now
        assert now <= 60.0
    assert now == 60.0
    assert probe.decision == Fallback("no answer in 60 s")


def test_timeout_names_a_refusal() -> None:
    probe = _probe()
    private = _by_path(probe.poll(0.0, US))[Path.PRIVATE]
    assert probe.on_response(_reply(private, ResponseType.UNKNOWN_DST_ENDPOINT),
                             _from(private), 0.01) is Verdict.REFUSED
    assert probe.decision is None
    probe.poll(60.0, US)
    assert probe.decision == Fallback("no answer in 60 s (the remote answered "
                                      "UNKNOWN_DST_ENDPOINT)")


@pytest.mark.parametrize("kind", [ResponseType.UNKNOWN_DST_CLUSTER,
                                  ResponseType.UNKNOWN_DST_ENDPOINT, ResponseType.MALFORMED])
def test_refusals_decide_nothing(kind: ResponseType) -> None:
    probe = _probe()
    public = _by_path(probe.poll(0.0, US))[Path.PUBLIC]
    assert probe.on_response(_reply(public, kind), _from(public), 0.01) is Verdict.REFUSED
    assert probe.decision is None
    assert probe.take_decision() is None


def test_a_held_public_answer_beats_the_timeout() -> None:
    probe = _probe(timings=Timings(private_window=5.0, timeout=2.0))
    public = _by_path(probe.poll(0.0, US))[Path.PUBLIC]
    probe.on_response(_reply(public), _from(public), 0.1)
    probe.poll(2.0, US)
    assert isinstance(probe.decision, Choice)
    assert probe.decision.use_ip == PUBLIC


def test_without_a_private_address_the_public_answer_decides_at_once() -> None:
    probe = _probe(Target("west", "cable-west", "", PUBLIC, PORT, False))
    sends = probe.poll(0.0, US)
    assert [s.path for s in sends] == [Path.PUBLIC]
    assert probe.on_response(_reply(sends[0]), (_addr("203.0.113.50"), 999), 0.03) \
        is Verdict.ACCEPTED  # a public answer may come from anywhere (NAT)
    assert probe.decision == Choice(PUBLIC, False, HOW_DISCOVERED,
                                    f"public {PUBLIC} answered in 30 ms")


def test_equal_private_and_public_are_probed_once() -> None:
    probe = _probe(Target("west", "cable-west", PRIVATE, PRIVATE, PORT, False))
    assert [s.path for s in probe.poll(0.0, US)] == [Path.PRIVATE]


@pytest.mark.parametrize(("target", "detail"), [
    (Target("west", "cable-west", PRIVATE, PUBLIC, 0, False), "no discovery port published"),
    (Target("west", "cable-west", PRIVATE, PUBLIC, 70000, False), "discovery port out of range"),
    (Target("west", "cable-west", "", "", PORT, False), "no address to probe"),
    (Target("west", "cable-west", "fe80::1%eth0", "host.example", PORT, False),
     "no address to probe"),
])
def test_unprobed_targets_fall_back_at_once(target: Target, detail: str) -> None:
    probe = _probe(target)
    assert probe.decision == Fallback(detail)
    assert probe.poll(0.0, US) == []
    assert probe.next_deadline() is None


def test_each_address_in_its_own_family() -> None:
    probe = _probe(Target("west", "cable-west", "fd00::2", PUBLIC, PORT, False))
    sends = probe.poll(0.0, US)
    assert [(s.path, s.address.version, s.sender.endpoint_id, s.receiver.endpoint_id)
            for s in sends] == [(Path.PRIVATE, 6, "cable-east-v6", "cable-west-v6"),
                                (Path.PUBLIC, 4, "cable-east-v4", "cable-west-v4")]


# --- Submariner's two forms of endpoint ID -----------------------------------------------------


def test_a_remote_that_knows_only_its_bare_name_is_asked_again_at_once() -> None:
    probe = _probe()
    first = _by_path(probe.poll(0.0, US))
    private = first[Path.PRIVATE]
    assert probe.on_response(_reply(private, ResponseType.UNKNOWN_DST_ENDPOINT),
                             _from(private), 0.01) is Verdict.REFUSED
    again = _by_path(probe.poll(0.01, US))  # not at 0.5: at once
    assert sorted(p.value for p in again) == ["private", "public"]
    assert again[Path.PRIVATE].receiver == EndpointDetails("west", "cable-west")
    assert again[Path.PRIVATE].sender == US
    # The public refusal of the first round, arriving late, does not switch back.
    assert probe.on_response(_reply(first[Path.PUBLIC], ResponseType.UNKNOWN_DST_ENDPOINT),
                             _from(first[Path.PUBLIC]), 0.02) is Verdict.REFUSED
    assert probe.on_response(_reply(again[Path.PRIVATE]), _from(again[Path.PRIVATE]), 0.03) \
        is Verdict.ACCEPTED


def test_names_switch_back_but_only_the_first_switch_hurries() -> None:
    probe = _probe()
    private = _by_path(probe.poll(0.0, US))[Path.PRIVATE]
    probe.on_response(_reply(private, ResponseType.UNKNOWN_DST_ENDPOINT), _from(private), 0.01)
    bare = _by_path(probe.poll(0.01, US))[Path.PRIVATE]
    assert bare.receiver.endpoint_id == "cable-west"
    probe.on_response(_reply(bare, ResponseType.UNKNOWN_DST_ENDPOINT), _from(bare), 0.02)
    assert probe.poll(0.02, US) == []  # no ping-pong at the speed of the round trip
    later = _by_path(probe.poll(1.01, US))[Path.PRIVATE]  # the hurried probe was the 2nd
    assert later.receiver.endpoint_id == "cable-west-v4"


def test_an_answer_from_the_other_form_of_the_name_is_not_the_one_we_asked() -> None:
    probe = _probe()
    private = _by_path(probe.poll(0.0, US))[Path.PRIVATE]
    bare_sender = EndpointDetails("west", "cable-west")
    assert probe.on_response(_reply(private, sender=bare_sender), _from(private), 0.01) \
        is Verdict.WRONG_SENDER


def test_a_family_without_a_socket_is_not_probed() -> None:
    probe = _probe(Target("west", "cable-west", "fd00::2", PUBLIC, PORT, False), versions=(4,))
    sends = probe.poll(0.0, US)
    assert [s.path for s in sends] == [Path.PUBLIC]
    # With no private address to wait for, the public answer decides at once.
    assert probe.on_response(_reply(sends[0]), _from(sends[0]), 0.01) is Verdict.ACCEPTED


def test_ipv6_private_answer_is_matched_as_an_address() -> None:
    probe = _probe(Target("west", "cable-west", "fd00:0::2", "", PORT, False))
    send = probe.poll(0.0, US)[0]
    assert probe.on_response(_reply(send), (_addr("fd00::2"), PORT), 0.01) is Verdict.ACCEPTED
    assert isinstance(probe.decision, Choice)
    assert probe.decision.use_ip == "fd00:0::2"  # the target's own text, as given


def test_request_numbers_are_never_0_nor_repeated() -> None:
    numbers = iter([0, 5, 5, 0, 6, 7])
    probe = TargetProbe(TARGET, 0.0, timings=TIMINGS, new_number=lambda: next(numbers))
    sends = probe.poll(0.0, US)
    assert [s.request_number for s in sends] == [5, 6]


def test_default_request_numbers_are_random_64_bit() -> None:
    probe = TargetProbe(TARGET, 0.0, timings=TIMINGS)
    numbers = [s.request_number for t in (0.0, 0.5, 1.5, 3.5) for s in probe.poll(t, US)]
    assert len(set(numbers)) == 8
    assert any(n >= 2**32 for n in numbers)  # not a small counter (fails 1 in 2**256)


# --- hostile and spoofed answers ---------------------------------------------------------------


def test_hostile_wrong_request_number_is_ignored() -> None:
    probe = _probe()
    private = _by_path(probe.poll(0.0, US))[Path.PRIVATE]
    verdict = probe.on_response(_reply(private, number=999_999),
                                _from(private), 0.01)
    assert verdict is Verdict.UNKNOWN_NUMBER
    assert probe.decision is None


def test_hostile_replayed_response_is_ignored() -> None:
    probe = _probe()
    sends = _by_path(probe.poll(0.0, US))
    public = _reply(sends[Path.PUBLIC])
    assert probe.on_response(public, _from(sends[Path.PUBLIC]), 0.01) is Verdict.HELD
    assert probe.on_response(public, _from(sends[Path.PUBLIC]), 0.02) is Verdict.UNKNOWN_NUMBER
    refusal = _reply(sends[Path.PRIVATE], ResponseType.UNKNOWN_DST_CLUSTER)
    assert probe.on_response(refusal, _from(sends[Path.PRIVATE]), 0.03) is Verdict.REFUSED
    assert probe.on_response(refusal, _from(sends[Path.PRIVATE]), 0.04) is Verdict.UNKNOWN_NUMBER


def test_hostile_replay_after_the_decision_changes_nothing() -> None:
    probe = _probe()
    private = _by_path(probe.poll(0.0, US))[Path.PRIVATE]
    response = _reply(private, ResponseType.OK)
    probe.on_response(response, _from(private), 0.01)
    before = probe.decision
    nat = _reply(private, ResponseType.NAT_DETECTED)
    assert probe.on_response(nat, _from(private), 0.02) is Verdict.DECIDED
    assert probe.decision == before


@pytest.mark.parametrize("sender", [EndpointDetails("west", "cable-other-v4"),
                                    EndpointDetails("north", "cable-west-v4"),
                                    EndpointDetails("west", "cable-west-v6"),
                                    EndpointDetails("", "")])
def test_hostile_wrong_sender_is_ignored(sender: EndpointDetails) -> None:
    probe = _probe()
    private = _by_path(probe.poll(0.0, US))[Path.PRIVATE]
    assert probe.on_response(_reply(private, sender=sender), _from(private), 0.01) \
        is Verdict.WRONG_SENDER


def test_hostile_wrong_receiver_is_ignored() -> None:
    probe = _probe()
    private = _by_path(probe.poll(0.0, US))[Path.PRIVATE]
    assert probe.on_response(_reply(private, receiver=EndpointDetails("east", "x")),
                             _from(private), 0.01) is Verdict.WRONG_RECEIVER


def test_an_answer_addressed_to_the_identity_we_sent_with_counts() -> None:
    # Our identity changed after the probe went out: the answer names the one we sent.
    probe = _probe()
    private = _by_path(probe.poll(0.0, US))[Path.PRIVATE]
    renamed = _by_path(probe.poll(0.5, EndpointDetails("east", "cable-east-new")))
    assert renamed[Path.PRIVATE].sender == EndpointDetails("east", "cable-east-new-v4")
    assert probe.on_response(_reply(private), _from(private), 0.6) is Verdict.ACCEPTED


@pytest.mark.parametrize("source", [("10.1.0.99", PORT), (PRIVATE, PORT + 1),
                                    (PUBLIC, PORT)])
def test_hostile_private_answer_from_another_address_is_ignored(source: tuple[str, int]) -> None:
    probe = _probe()
    private = _by_path(probe.poll(0.0, US))[Path.PRIVATE]
    response = _reply(private)
    assert probe.on_response(response, (_addr(source[0]), source[1]), 0.01) \
        is Verdict.WRONG_SOURCE
    assert probe.decision is None
    # The forgery used nothing up: the real answer still counts.
    assert probe.on_response(response, _from(private), 0.02) is Verdict.ACCEPTED


@pytest.mark.parametrize("missing", ["sender", "receiver", "received_src"])
def test_hostile_response_missing_a_part_is_malformed(missing: str) -> None:
    probe = _probe()
    private = _by_path(probe.poll(0.0, US))[Path.PRIVATE]
    good = _reply(private)
    parts = {"sender": good.sender, "receiver": good.receiver,
             "received_src": good.received_src, missing: None}
    response = Response(good.request_number, ResponseType.OK, parts["sender"],  # type: ignore[arg-type]
                        parts["receiver"], received_src=parts["received_src"])  # type: ignore[arg-type]
    assert probe.on_response(response, _from(private), 0.01) is Verdict.MALFORMED


def test_outstanding_numbers_are_bounded() -> None:
    probe = _probe(timings=Timings(resend=(0.1,), timeout=100.0))
    first = _by_path(probe.poll(0.0, US))[Path.PRIVATE]
    for i in range(1, 40):
        probe.poll(i * 0.1, US)
    assert probe.on_response(_reply(first), _from(first), 4.0) is Verdict.UNKNOWN_NUMBER


def test_timings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="resend"):
        Timings(resend=())
    with pytest.raises(ValueError, match="resend"):
        Timings(resend=(0.5, 0.0))
    with pytest.raises(ValueError, match="timeout"):
        Timings(timeout=0)
