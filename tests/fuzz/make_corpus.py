#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (src/fuzz): python3 tests/fuzz/make_corpus.py.

Seeds are small, valid examples of what each door receives; the fuzzer mutates from them.
"""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def crlf(lines):
    return "\r\n".join(lines)


SDP_OFFER = crlf([
    "v=0", "o=user1 53655765 2353687637 IN IP4 192.0.2.10", "s=-", "c=IN IP4 192.0.2.10",
    "t=0 0", "m=audio 6000 RTP/AVP 0 8 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20", "a=sendrecv", "",
])
SDP_HOLD = crlf([
    "v=0", "o=- 1 3 IN IP4 192.0.2.10", "s=-", "c=IN IP4 0.0.0.0", "t=0 0",
    "m=audio 6000 RTP/AVP 8", "a=sendonly", "",
])
SDP_V6 = crlf([
    "v=0", "o=- 7 7 IN IP6 2001:db8::1", "s=-", "t=0 0", "m=audio 7000 RTP/AVP 8 0 101",
    "c=IN IP6 2001:db8::1", "a=rtpmap:101 telephone-event/8000", "a=recvonly", "",
])
SDP_ANSWER = crlf([
    "v=0", "o=FreeSWITCH 1 2 IN IP4 192.0.2.10", "s=FreeSWITCH", "c=IN IP4 192.0.2.10",
    "t=0 0", "m=audio 24000 RTP/AVP 0 101", "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20", "", 
])
SDP_TWO_STREAMS = crlf([
    "v=0", "o=- 1 1 IN IP4 192.0.2.10", "s=-", "t=0 0", "m=video 0 RTP/AVP 96",
    "m=audio 6002 RTP/AVP 0", "c=IN IP4 192.0.2.11", "a=rtpmap:0 PCMU/8000", "",
])

for name, sdp in [("offer", SDP_OFFER), ("hold", SDP_HOLD), ("ipv6", SDP_V6),
                  ("answer", SDP_ANSWER), ("two_streams", SDP_TWO_STREAMS)]:
    put("sip_sdp", name, sdp)


def sip(start, headers, body=""):
    return crlf([start] + headers + [f"Content-Length: {len(body.encode())}", "", ""]) + body


VIA = "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport"
INVITE = sip("INVITE sip:01001@192.0.2.1:5086 SIP/2.0", [
    VIA, "Max-Forwards: 70", "From: \"Phone\" <sip:1005@192.0.2.10>;tag=1928301774",
    "To: <sip:01001@192.0.2.1>", "Call-ID: a84b4c76e66710@pc33.example.com", "CSeq: 314159 INVITE",
    "Contact: <sip:1005@192.0.2.10:5060>", "X-Number: alice", "Record-Route: <sip:192.0.2.10;lr>",
    "Content-Type: application/sdp",
], SDP_OFFER)
REINVITE = sip("INVITE sip:1000@192.0.2.1:5086 SIP/2.0", [
    VIA, "From: <sip:1005@192.0.2.10>;tag=1928301774", "To: <sip:1000@192.0.2.1>;tag=abc",
    "Call-ID: a84b4c76e66710", "CSeq: 2 INVITE", "Content-Type: application/sdp",
], SDP_HOLD)
OPTIONS = sip("OPTIONS sip:1000@192.0.2.1:5086 SIP/2.0", [
    VIA, "From: <sip:ping@192.0.2.10>;tag=x1", "To: <sip:1000@192.0.2.1>", "Call-ID: opt1",
    "CSeq: 1 OPTIONS", "Max-Forwards: 70",
])
BYE = sip("BYE sip:1000@192.0.2.1:5086;transport=udp SIP/2.0", [
    VIA, "From: <sip:1005@192.0.2.10>;tag=1928301774", "To: <sip:1000@192.0.2.1>;tag=abc",
    "Call-ID: a84b4c76e66710", "CSeq: 3 BYE",
])
CANCEL_COMPACT = sip("CANCEL sip:01001@192.0.2.1 SIP/2.0", [
    "v: SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bKc1", "f: <sip:1005@192.0.2.10>;tag=9",
    "t: <sip:01001@192.0.2.1>", "i: c1", "CSeq: 1 CANCEL",
])
RESPONSE = sip("SIP/2.0 200 OK", [
    VIA, "From: <sip:1000@192.0.2.1>;tag=ours", "To: <sip:1005@192.0.2.10>;tag=theirs",
    "Call-ID: out1@192.0.2.1", "CSeq: 1 INVITE", "Contact: <sip:1005@192.0.2.10>",
    "Content-Type: application/sdp",
], SDP_ANSWER)
UNAUTHORIZED = sip("SIP/2.0 401 Unauthorized", [
    VIA, "From: <sip:1000@192.0.2.1>;tag=r1", "To: <sip:1000@192.0.2.1>", "Call-ID: reg1",
    "CSeq: 1 REGISTER",
    'WWW-Authenticate: Digest realm="pbx", nonce="abc123", algorithm=MD5, qop="auth"',
])
for name, msg in [("invite", INVITE), ("reinvite", REINVITE), ("options", OPTIONS), ("bye", BYE),
                  ("cancel_compact", CANCEL_COMPACT), ("response_200", RESPONSE),
                  ("response_401", UNAUTHORIZED)]:
    put("sip_message", name, msg)
put("sip_stream", "two_messages", OPTIONS + BYE)
put("sip_stream", "keepalive_then_invite", "\r\n\r\n" + INVITE)
put("sip_stream", "partial", INVITE[: len(INVITE) // 2])

CHROME_OFFER = crlf([
    "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "a=extmap-allow-mixed", "a=msid-semantic: WMS 6d3b3c1a",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126", "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0", "a=ice-ufrag:Wq7n", "a=ice-pwd:5kRk2tkS1rJ8aU0bX9yXq7Ul",
    "a=ice-options:trickle",
    "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08",
    "a=setup:actpass", "a=mid:0", "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=sendrecv", "a=msid:6d3b3c1a 0b5c6a3e", "a=rtcp-mux", "a=rtcp-rsize",
    "a=rtpmap:111 opus/48000/2", "a=rtcp-fb:111 transport-cc", "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2", "a=fmtp:63 111/111", "a=rtpmap:9 G722/8000", "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000", "a=rtpmap:13 CN/8000", "a=rtpmap:110 telephone-event/48000",
    "a=rtpmap:126 telephone-event/8000", "a=ssrc:3735928559 cname:Ys0vQ5KQm7yq9G0P",
    "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host", "",
])
FIREFOX_PCMU = crlf([
    "v=0", "o=mozilla...THIS_IS_SDPARTA-99.0 1 0 IN IP4 0.0.0.0", "s=-", "t=0 0",
    "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08",
    "a=group:BUNDLE 0", "a=ice-options:trickle", "a=msid-semantic:WMS *",
    "m=audio 9 UDP/TLS/RTP/SAVPF 0 8 101", "c=IN IP4 0.0.0.0", "a=sendrecv", "a=ice-pwd:abcdefabcdefabcdefabcdef",
    "a=ice-ufrag:abcd", "a=mid:0", "a=rtcp-mux", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000", "a=setup:actpass", "",
])
put("browser_sdp", "chrome_offer", CHROME_OFFER)
put("browser_sdp", "firefox_pcmu_offer", FIREFOX_PCMU)
put("browser_sdp", "candidate_host",
    '{"candidate":"candidate:1 1 udp 2130706431 127.0.0.1 50312 typ host","sdpMid":"0","sdpMLineIndex":0}')
put("browser_sdp", "candidate_mdns",
    '{"candidate":"candidate:2 1 udp 1677729535 3f2a1c9e-1111-2222-3333-444455556666.local 61000 typ srflx raddr 0.0.0.0 rport 0 generation 0","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"Wq7n"}')
put("browser_sdp", "candidate_end", '{"candidate":"","sdpMid":"0","sdpMLineIndex":0}')

RS = "\x1e"
frames = {
    "login_invite_media": [
        '{"type":"invite","id":2,"callId":"c1","callee":"1005","content":"{\\"Mode\\":1}"}',
        '{"type":"media","id":3,"callId":"c1","payload":{"kind":"offer","sdp":"v=0\\r\\n"}}',
        '{"type":"media","id":4,"callId":"c1","payload":{"kind":"candidate","candidate":null}}',
    ],
    "web_to_web": [
        '{"type":"invite","id":5,"callId":"w1","callee":"bob","content":""}',
        '{"type":"accept","id":6,"callId":"w1","response":"ok"}',
        '{"type":"cancel","id":7,"callId":"w1"}',
    ],
    "peer_messages": [
        '{"type":"peer_message","id":3,"to":"bridge","text":"{\\"Cmd\\":\\"EndCall\\"}"}',
        '{"type":"query_online","id":9,"uids":["alice","bob","x"]}',
        '{"type":"subscribe","id":10,"uids":["bob"]}',
        '{"type":"ping","id":11}',
    ],
    "relogin_logout": [
        '{"type":"login","id":1,"v":1,"uid":"carol","appid":"app","token":"1767225600:5f00"}',
        '{"type":"refuse","id":2,"callId":"nope","response":""}',
        '{"type":"logout","id":12}',
    ],
}
for name, fs in frames.items():
    put("hub_frame", name, RS.join(fs))

# cluster_msg: NATS payloads between nodes (src/cluster/wire.rs), split on 0x1E; even parts are read
# as presence messages, odd ones as a node's mail.
cluster = {
    "presence_and_ring": [
        '{"kind":"heartbeat","node":"a","uids":["alice","ann"]}',
        '{"dir":"to_browser","from":"a","msg":{"kind":"ring","uid":"alice","call_id":"c9","caller":"1002","content":"{}"}}',
        '{"kind":"login","node":"c","uid":"bob","at_ms":1767225600000}',
        '{"dir":"from_browser","from":"a","event":{"kind":"remote_invitation_accepted","call_id":"c1","uid":"alice","response":""}}',
    ],
    "media_and_leave": [
        '{"kind":"logout","node":"a","uid":"ann"}',
        '{"dir":"from_browser","from":"a","event":{"kind":"media","call_id":"c1","from_uid":"alice","payload":{"kind":"offer","sdp":"v=0"}}}',
        '{"kind":"leave","node":"a"}',
        '{"dir":"to_browser","from":"b","msg":{"kind":"media","uid":"alice","call_id":"r1","payload":{"kind":"candidate","candidate":null}}}',
    ],
}
for name, ms in cluster.items():
    put("cluster_msg", name, RS.join(ms))


def rtp(pt, seq, ts, ssrc, payload, marker=False, csrc=(), ext=None, pad=0):
    b0 = 0x80 | (0x20 if pad else 0) | (0x10 if ext is not None else 0) | len(csrc)
    b1 = (0x80 if marker else 0) | pt
    out = struct.pack("!BBHII", b0, b1, seq, ts, ssrc)
    for c in csrc:
        out += struct.pack("!I", c)
    if ext is not None:
        out += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    out += payload
    if pad:
        out += b"\x00" * (pad - 1) + bytes([pad])
    return out


put("rtp_packet", "pcmu", rtp(0, 1, 160, 0xCAFE, bytes([0xFF, 0x7F] * 80)))
put("rtp_packet", "pcma_marker_csrc", rtp(8, 2, 320, 0xCAFE, bytes([0xD5] * 160), True, (1, 2)))
put("rtp_packet", "dtmf_event", rtp(101, 3, 480, 0xCAFE, bytes([5, 0x8A, 0x03, 0x20]), True))
put("rtp_packet", "opus_ext_pad", rtp(111, 4, 960, 0xB0B, bytes([0x78, 0x01, 0x02, 0x03]), False,
                                     (), b"\x10\xff\x00\x00", 4))
put("rtp_packet", "browser_dtmf48k", rtp(110, 5, 96000, 0xB0B, bytes([1, 0x0A, 0x17, 0x70])))
put("rtp_packet", "rtcp_rr", struct.pack("!BBHI", 0x81, 201, 7, 0xCAFE) + b"\x00" * 24)
put("rtp_packet", "stun_binding",
    struct.pack("!HHI", 1, 8, 0x2112A442) + b"\x01" * 12 + struct.pack("!HH", 0x0006, 4) + b"user")
put("rtp_packet", "dtls_client_hello", bytes([22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4]) + b"\x01\x00\x00\x00")

# rtp_source: 3-byte ops (source, seq/ssrc bits, time step in 10 ms); 0xFF = new SDP address.
put("rtp_source", "phone_then_stranger", bytes([0, 0, 2] * 10 + [3, 0, 2] * 10 + [0, 0, 2] * 3))
put("rtp_source", "nat_rebind", bytes([1, 0, 2] * 5 + [3, 0, 250] + [3, 0, 2] * 6))
put("rtp_source", "reinvite", bytes([0, 0, 2] * 3 + [0xFF, 1, 0] + [2, 0, 2] * 3 + [4, 0, 2] * 8))

with open(os.path.join(REPO, "config", "rtx.conf"), "rb") as f:
    put("config_rtx", "shipped", f.read())
put("config_rtx", "minimal", "[global]\nappid=a\nsip_svr=127.0.0.1:5060\n[proxy]\non=1\nsip_account=1000\nsip_pwd=x\nrtm_account=1000\n")
with open(os.path.join(REPO, "config", "srbridge.toml"), "rb") as f:
    put("config_toml", "shipped", f.read())
put("config_toml", "minimal",
    '[global]\nappid = "a"\nsip_svr = "127.0.0.1:5060"\n[proxy]\nsip_account = "1000"\nsip_pwd = "x"\n'
    '[media]\nrtp_port_min = 20000\nrtp_port_max = 20099\ncodecs = ["pcmu", "pcma"]\n')
print("corpus written to", ROOT)
