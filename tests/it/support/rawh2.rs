//! A minimal gRPC-over-HTTP/2 client written frame by frame, to send the `:authority` values
//! kube-apiserver sends (DESIGN §9) without Python.
//!
//! No Rust HTTP/2 client can send them: `h2`'s client takes `:authority` from an `http::Uri`, and
//! `http` refuses to parse `/var/run/kms.sock` or `%2Fvar%2Frun%2Fkms.sock` as an authority, so such a
//! request cannot even be built (tonic sits on the same `h2`). This client writes the header block
//! itself, every field an HPACK literal without indexing (RFC 7541 §6.2.2, no Huffman), so any byte
//! string goes out as `:authority` — as grpc-go does. It does not decode the server's HPACK: a call
//! succeeds when the response carries a gRPC message that decodes as the expected response type and the
//! stream ends cleanly; a gRPC error (trailers only), a stream reset (what `h2` does to a request it
//! finds malformed) or a GOAWAY is reported as such. One call at a time, all on one connection, as
//! kube-apiserver keeps one.
//!
//! The grpcio client of `tests/py/kms_client.py` (the live step of scripts/test.sh) does the same with
//! a real grpc-core stack; this one keeps the forms covered in the default `cargo test`.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;

/// How one call failed.
#[derive(Debug)]
pub enum Failure {
    /// The server reset the stream (RST_STREAM) with this error code; `h2` answers a request whose
    /// `:authority` it refuses with PROTOCOL_ERROR (1).
    Reset(u32),
    /// The server ended the connection (GOAWAY) with this error code.
    GoAway(u32),
    /// The stream ended without a response message: a gRPC error status (not decoded here).
    NoMessage,
    /// A message came but is not the expected response.
    BadMessage(String),
    /// The connection failed or was closed.
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

/// One HTTP/2 connection to a KMS socket.
pub struct RawH2 {
    io: UnixStream,
    authority: Option<Vec<u8>>,
    next_stream: u32,
}

impl RawH2 {
    /// Connects to `socket` (a path, or `@name` for an abstract socket) and sends the connection
    /// preface; every request will carry `authority` as `:authority` (`None`: no `:authority` field).
    pub fn connect(socket: &str, authority: Option<&str>) -> io::Result<Self> {
        let io = match socket.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                UnixStream::connect_addr(&addr)?
            }
            None => UnixStream::connect(socket)?,
        };
        io.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut c = RawH2 {
            io,
            authority: authority.map(|a| a.as_bytes().to_vec()),
            next_stream: 1,
        };
        let mut hello = PREFACE.to_vec();
        frame(&mut hello, SETTINGS, 0, 0, &[]);
        c.io.write_all(&hello)?;
        Ok(c)
    }

    /// Calls `path` (e.g. `/v2.KeyManagementService/Status`) with `req`; the decoded response.
    pub fn call<Req, Resp>(&mut self, path: &str, req: &Req) -> Result<Resp, Failure>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let stream = self.next_stream;
        self.next_stream += 2;

        let mut block = Vec::new();
        literal(&mut block, b":method", b"POST");
        literal(&mut block, b":scheme", b"http");
        literal(&mut block, b":path", path.as_bytes());
        if let Some(a) = &self.authority {
            literal(&mut block, b":authority", a);
        }
        literal(&mut block, b"content-type", b"application/grpc");
        literal(&mut block, b"te", b"trailers");
        literal(&mut block, b"grpc-timeout", b"3S");
        let msg = req.encode_to_vec();
        let mut body = vec![0u8];
        body.extend_from_slice(
            &u32::try_from(msg.len())
                .expect("small message")
                .to_be_bytes(),
        );
        body.extend_from_slice(&msg);
        let mut out = Vec::new();
        frame(&mut out, HEADERS, END_HEADERS, stream, &block);
        frame(&mut out, DATA, END_STREAM, stream, &body);
        self.io.write_all(&out)?;

        let mut data = Vec::new();
        loop {
            let (kind, flags, id, payload) = self.read_frame()?;
            match kind {
                SETTINGS if flags & ACK == 0 => self.send(SETTINGS, ACK, 0, &[])?,
                PING if flags & ACK == 0 => self.send(PING, ACK, 0, &payload)?,
                GOAWAY => return Err(Failure::GoAway(be_u32(payload.get(4..8)))),
                RST_STREAM if id == stream => return Err(Failure::Reset(be_u32(payload.get(..4)))),
                DATA if id == stream => {
                    data.extend_from_slice(unpad(flags, &payload)?);
                    if flags & END_STREAM != 0 {
                        break;
                    }
                }
                HEADERS if id == stream && flags & END_STREAM != 0 => break,
                _ => {} // response headers, WINDOW_UPDATE, CONTINUATION, acks
            }
        }
        // One gRPC message: compressed flag, 4-byte length, the message.
        let (Some(&0), Some(len), Some(msg)) = (data.first(), data.get(1..5), data.get(5..)) else {
            return Err(Failure::NoMessage);
        };
        if usize::try_from(be_u32(Some(len))).ok() != Some(msg.len()) {
            return Err(Failure::BadMessage(format!("{} bytes of DATA", data.len())));
        }
        Resp::decode(msg).map_err(|e| Failure::BadMessage(e.to_string()))
    }

    fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::new();
        frame(&mut out, kind, flags, stream, payload);
        self.io.write_all(&out)
    }

    fn read_frame(&mut self) -> io::Result<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        self.io.read_exact(&mut head)?;
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = head;
        let len = u32::from_be_bytes([0, l0, l1, l2]) as usize;
        let mut payload = vec![0u8; len];
        self.io.read_exact(&mut payload)?;
        let stream = u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff;
        Ok((kind, flags, stream, payload))
    }
}

fn be_u32(b: Option<&[u8]>) -> u32 {
    b.and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(u32::MAX, u32::from_be_bytes)
}

fn unpad(flags: u8, payload: &[u8]) -> io::Result<&[u8]> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad padding");
    let (&pad, rest) = payload.split_first().ok_or_else(bad)?;
    let keep = rest.len().checked_sub(pad as usize).ok_or_else(bad)?;
    rest.get(..keep).ok_or_else(bad)
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("small frame");
    assert!(
        len < 1 << 14,
        "frame over the default SETTINGS_MAX_FRAME_SIZE"
    );
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK "literal header field without indexing — new name", both strings raw (RFC 7541 §6.2.2).
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    for s in [name, value] {
        hpack_int(out, 7, s.len());
        out.extend_from_slice(s);
    }
}

/// An HPACK integer with an `n`-bit prefix, the prefix's other bits (here the Huffman flag) zero.
fn hpack_int(out: &mut Vec<u8>, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(v as u8);
        return;
    }
    out.push(max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

#[test]
fn hpack_integers_follow_rfc_7541_examples() {
    // C.1.1 and C.1.2 with a 5-bit prefix; here with the 7-bit prefix of string lengths.
    let mut out = Vec::new();
    hpack_int(&mut out, 5, 10);
    hpack_int(&mut out, 5, 1337);
    hpack_int(&mut out, 7, 126);
    hpack_int(&mut out, 7, 127);
    assert_eq!(out, [10, 31, 154, 10, 126, 127, 0]);
}
