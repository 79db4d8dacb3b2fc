"""Checking an SDP offer completely before anything is made for it.

aiortc's SDP parser trusts its input: a line without its value, a non-numeric port or a
candidate with three fields ends in an IndexError, AttributeError or AssertionError from deep
inside it, and an offer without `a=setup` or `a=fingerprint` is accepted and fails later in the
DTLS transport, where nobody hears of it. So every offer is read here first, line by line, with
the same grammar aiortc reads it with, then parsed and checked for what a WebRTC peer needs
(ICE credentials, a DTLS role and fingerprint, RTCP mux, a codec we decode). Whatever is wrong
comes back as one `StreamError` that names the line: `bad_sdp` (400), `message_too_large` (413)
or `unsupported_format` (422), before any session, peer or slot exists.

The limits bound what a hostile offer can make the server do: how many transceivers it builds
and how many remote candidates ICE sends connectivity checks to.
"""

from __future__ import annotations

import re

from aiortc import rtp, sdp
from aiortc.codecs import CODECS
from aiortc.rtcdtlstransport import X509_DIGEST_ALGORITHMS
from aiortc.rtcpeerconnection import find_common_codecs

from streaming.errors import ErrorCode, StreamError
from streaming.webrtc.codecs import SUPPORTED, unsupported_offer

MAX_SDP_BYTES = 64 * 2**10
MAX_MEDIA_SECTIONS = 8      # the demo offers three (video, audio, data channel)
MAX_CANDIDATES = 32         # per media section; a browser with several interfaces offers about ten

MEDIA_KINDS = ("audio", "video", "application")
_SCTP_PROFILES = ("UDP/DTLS/SCTP", "DTLS/SCTP")

# The attributes aiortc reads a value from: the grammar it expects (a full match), and how to
# write it, for the error message.
_VALUES: dict[str, tuple[str, str]] = {
    "rtpmap": (r"\d{1,3} [^\s/]+/\d{1,10}(/\d{1,2})?", "<payload type> <encoding>/<clock rate>[/<channels>]"),
    "fmtp": (r"\d{1,3} \S.*", "<payload type> <parameters>"),
    "rtcp-fb": (r"(\*|\d{1,3}) \S.*", "<payload type or *> <feedback type>"),
    # Pairs after `typ <type>` are read two by two; rport's value is a number.
    "candidate": (r"\S+ \d{1,3} \S+ \d{1,10} \S+ \d{1,5} typ \S+(?: (?!rport )\S+ \S+| rport \d{1,5})*(?: \S+)?",
                  "<foundation> <component> <transport> <priority> <address> <port> typ <type> [<name> <value>]..."),
    "fingerprint": (r"\S+ [0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})+", "<hash function> <hex bytes separated by colons>"),
    "setup": (r"actpass|active|passive", "actpass, active or passive"),
    "extmap": (r"\d{1,5}(/[a-z]+)? \S+", "<id>[/<direction>] <URI>"),
    "ssrc": (r"\d{1,10} [^\s:]+:.*", "<ssrc> <attribute>:<value>"),
    "ssrc-group": (r"\S+( \d{1,10})*", "<semantics> <ssrc>..."),
    "rtcp": (r"\d{1,5}( IN IP[46] \S+)?", "<port> [IN IP4|IP6 <address>]"),
    "sctp-port": (r"\d{1,5}", "<port>"),
    "max-message-size": (r"\d{1,10}", "<bytes>"),
    "sctpmap": (r"\d{1,5} \S.*", "<port> <protocol> [<streams>]"),
    "ice-ufrag": (r"\S+", "<username fragment>"),
    "ice-pwd": (r"\S+", "<password>"),
    "mid": (r"\S+", "<media id>"),
    "msid": (r"\S+( \S+)?", "<stream id> [<track id>]"),
}
_COMPILED = {name: re.compile(pattern) for name, (pattern, _) in _VALUES.items()}
_FMTP_INTEGERS = set(sdp.FMTP_INT_PARAMETERS)
_LINE = re.compile(r"[a-z]=.*")
_MEDIA_LINE = re.compile(r"m=(\S+) (\d{1,5}) ([A-Z/]+) (\S.*)")
_CONNECTION = re.compile(r"IN IP[46] \S+")


def bad_sdp(message: str) -> StreamError:
    return StreamError(ErrorCode.BAD_SDP, message, field="sdp")


def check_offer(offer_sdp: str) -> sdp.SessionDescription:
    """The parsed offer, once it is known that aiortc can answer it; StreamError otherwise."""
    try:
        size = len(offer_sdp.encode())
    except UnicodeEncodeError as err:  # a lone surrogate, which JSON's \u escapes can carry: no UTF-8 text
        raise bad_sdp(f"the offer is not UTF-8 text (character {err.start} cannot be encoded)") from None
    if size > MAX_SDP_BYTES:
        raise StreamError(ErrorCode.MESSAGE_TOO_LARGE, f"the offer is {size} bytes; the limit is {MAX_SDP_BYTES}", field="sdp")
    _check_lines(offer_sdp.splitlines())
    try:
        description = sdp.SessionDescription.parse(offer_sdp)
    except Exception as err:  # noqa: BLE001 - any parser failure is the offer's fault, and answered as such
        raise bad_sdp(f"the offer could not be parsed ({type(err).__name__}: {err})") from None
    _check_media(description)
    return description


def _check_lines(lines: list[str]) -> None:
    """Every line as `<letter>=<value>`, and each value aiortc reads in the form it reads it."""
    if not lines or lines[0].strip() != "v=0":
        raise bad_sdp("the body is not an SDP offer: it must start with the line v=0")
    media_sections = candidates = 0
    section = _Section()
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        if not _LINE.fullmatch(line):
            raise bad_sdp(f"line {number} is not an SDP line (<letter>=<value>): {_quote(line)}")
        kind, value = line[0], line[2:]
        if kind == "m":
            section.check_formats()
            section = _Section()
            media_sections += 1
            candidates = 0
            if media_sections > MAX_MEDIA_SECTIONS:
                raise bad_sdp(f"the offer has more than {MAX_MEDIA_SECTIONS} media sections")
            _check_media_line(number, line)
        elif kind == "c" and not _CONNECTION.fullmatch(value):
            raise bad_sdp(f"line {number} (c=): expected IN IP4|IP6 <address>, got {_quote(line)}")
        elif kind == "a":
            name, has_value, attribute_value = value.partition(":")
            if name == "candidate":
                candidates += 1
                if candidates > MAX_CANDIDATES:
                    raise bad_sdp(f"line {number}: more than {MAX_CANDIDATES} candidates in one media section")
            expected = _COMPILED.get(name)
            if expected is None:
                continue
            if not has_value or not expected.fullmatch(attribute_value):
                raise bad_sdp(f"line {number} (a={name}): expected {_VALUES[name][1]}, got {_quote(line)}")
            if name == "rtpmap":
                section.mapped.add(int(attribute_value.split(" ", 1)[0]))
            elif name == "fmtp":
                _check_fmtp(number, attribute_value)
                section.parameters[int(attribute_value.split(" ", 1)[0])] = number
    section.check_formats()


class _Section:
    """The payload types one media section maps (a=rtpmap) and gives parameters to (a=fmtp), by
    line: aiortc attaches parameters to a mapped payload type only."""

    def __init__(self) -> None:
        self.mapped: set[int] = set()
        self.parameters: dict[int, int] = {}

    def check_formats(self) -> None:
        for payload_type, number in self.parameters.items():
            if payload_type not in self.mapped:
                raise bad_sdp(f"line {number} (a=fmtp): payload type {payload_type} has no a=rtpmap in its media section")


def _check_media_line(number: int, line: str) -> None:
    match = _MEDIA_LINE.fullmatch(line)
    if match is None:
        raise bad_sdp(f"line {number} (m=): expected <media> <port> <protocol> <formats>, got {_quote(line)}")
    kind, _, profile, formats = match.groups()
    if kind not in MEDIA_KINDS:
        raise bad_sdp(f"line {number}: media {kind!r} is not answered here; offer {', '.join(MEDIA_KINDS)}")
    if kind == "application":
        if profile not in _SCTP_PROFILES:
            raise bad_sdp(f"line {number}: a data channel travels over {' or '.join(_SCTP_PROFILES)}, not {profile}")
        if profile == "DTLS/SCTP" and not formats.split()[0].isdigit():
            raise bad_sdp(f"line {number}: DTLS/SCTP names the SCTP port as its format")
        return
    for fmt in formats.split():
        if not fmt.isdigit() or int(fmt) > 127 or int(fmt) in rtp.FORBIDDEN_PAYLOAD_TYPES:
            raise bad_sdp(f"line {number}: {fmt!r} is not an RTP payload type (0-127, not 72-76)")


def _check_fmtp(number: int, value: str) -> None:
    """The format parameters aiortc reads as integers must be integers."""
    for parameter in value.split(" ", 1)[1].split(";"):
        name, has_value, parameter_value = parameter.partition("=")
        if has_value and name in _FMTP_INTEGERS and not re.fullmatch(r"-?\d{1,10}", parameter_value):
            raise bad_sdp(f"line {number} (a=fmtp): {name} must be a whole number, not {parameter_value!r}")


def _check_media(description: sdp.SessionDescription) -> None:
    """What a WebRTC peer needs of each media section, and a codec we decode for audio and video."""
    if not description.media:
        raise bad_sdp("the SDP offer has no media sections")
    mids: set[str] = set()
    for index, media in enumerate(description.media):
        where = f"media section {index + 1} ({media.kind})"
        mid = media.rtp.muxId
        if not mid:
            raise bad_sdp(f"{where} has no a=mid")
        if mid in mids:
            raise bad_sdp(f"{where} repeats a=mid:{mid}")
        mids.add(mid)
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise bad_sdp(f"{where} has no ICE credentials (a=ice-ufrag and a=ice-pwd)")
        if media.dtls is None:
            raise bad_sdp(f"{where} has no a=setup (actpass, active or passive)")
        if not any(f.algorithm.lower() in X509_DIGEST_ALGORITHMS for f in media.dtls.fingerprints):
            raise bad_sdp(f"{where} has no a=fingerprint with {', '.join(X509_DIGEST_ALGORITHMS)}: "
                          "DTLS cannot check the sender's certificate without it")
        if media.kind == "application":
            if media.profile == "UDP/DTLS/SCTP" and media.sctp_port is None:
                raise bad_sdp(f"{where} has no a=sctp-port")
            continue
        if not media.rtcp_mux:
            raise bad_sdp(f"{where} has no a=rtcp-mux (RTP and RTCP must share the port)")
        if media.direction is None:
            raise bad_sdp(f"{where} has no direction (a=sendrecv, a=sendonly, a=recvonly or a=inactive)")
        try:
            common = find_common_codecs(CODECS[media.kind], media.rtp.codecs)
        except ValueError as err:  # an H.264 profile-level-id that is not one
            raise bad_sdp(f"{where}: {err}") from None
        if not common and media.kind in SUPPORTED:
            raise unsupported_offer(description, media.kind)
    _check_bundle(description, mids)


def _check_bundle(description: sdp.SessionDescription, mids: set[str]) -> None:
    """aiortc moves the sections of the first BUNDLE group onto the first one's transport: each
    must be a section of this offer, and named once."""
    bundle = next((group for group in description.group if group.semantic == "BUNDLE"), None)
    if bundle is None:
        return
    items = [str(item) for item in bundle.items]
    unknown = [item for item in items if item not in mids]
    if unknown:
        raise bad_sdp(f"a=group:BUNDLE names {', '.join(unknown)}, which no media section has as a=mid")
    if len(set(items)) != len(items):
        raise bad_sdp("a=group:BUNDLE names a media section twice")


def _quote(line: str, limit: int = 80) -> str:
    return repr(line if len(line) <= limit else line[:limit] + "...")
