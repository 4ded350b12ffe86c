// unwrap, expect and indexing are allowed in tests by clippy.toml; a panic is how a test fails.
#![allow(clippy::panic, reason = "a panic is how a test fails")]

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::rewrite::{MAX_BLOCK, MAX_OUT_FRAME, PREFACE, Rewriter, Step};
use crate::*;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIO: u8 = 0x20;

const SOCKET: &str = "/var/run/k8s-kms-plugin/kms-plugin.sock";

// ---------------------------------------------------------------------------------------------
// Building and reading raw HTTP/2 byte streams
// ---------------------------------------------------------------------------------------------

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    assert!(len < 1 << 24);
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn settings() -> Vec<u8> {
    // SETTINGS_ENABLE_PUSH = 0, SETTINGS_INITIAL_WINDOW_SIZE = 4 MiB
    frame(SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 0, 0, 4, 0, 0x40, 0, 0])
}

/// Preface + SETTINGS + the given frames.
fn client_stream(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut s = PREFACE.to_vec();
    s.extend(settings());
    for f in frames {
        s.extend_from_slice(f);
    }
    s
}

fn grpc_request(authority: &str, timeout: &str) -> Vec<(String, String)> {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/v2.KeyManagementService/Encrypt"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("user-agent", "grpc-go/1.65.0"),
        ("te", "trailers"),
        ("grpc-timeout", timeout),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect()
}

fn encode(encoder: &mut Encoder<'_>, fields: &[(String, String)]) -> Vec<u8> {
    encoder.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
}

fn with_authority(fields: &[(String, String)], authority: &str) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(n, v)| {
            if n == ":authority" {
                (n.clone(), authority.to_string())
            } else {
                (n.clone(), v.clone())
            }
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn bytes(&self) -> Vec<u8> {
        frame(self.kind, self.flags, self.stream, &self.payload)
    }
}

fn parse_frames(mut b: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 9, "truncated frame header in output");
        let len = (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize;
        assert!(b.len() >= 9 + len, "truncated frame in output");
        frames.push(Frame {
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]),
            payload: b[9..9 + len].to_vec(),
        });
        b = &b[9 + len..];
    }
    frames
}

/// One header block of the adapter's output.
#[derive(Debug)]
struct Block {
    stream: u32,
    /// Flags of the HEADERS frame.
    flags: u8,
    priority: Option<[u8; 5]>,
    fields: Vec<(String, String)>,
    /// Number of frames (HEADERS + CONTINUATION) it took.
    frames: usize,
}

/// Everything the adapter produced, split into header blocks and other frames (in order), with
/// the framing rules checked: no PADDED, no frame over 16384, CONTINUATION only where it belongs.
/// Each block is decoded with a fresh HPACK decoder: the output must never rely on a dynamic table.
fn read_output(out: &[u8]) -> (Vec<Block>, Vec<Frame>) {
    assert!(out.starts_with(PREFACE), "preface not forwarded");
    let frames = parse_frames(&out[PREFACE.len()..]);
    let mut blocks = Vec::new();
    let mut others = Vec::new();
    let mut open: Option<(Block, Vec<u8>)> = None;
    for f in frames {
        if matches!(f.kind, HEADERS | CONTINUATION) {
            assert!(f.payload.len() <= MAX_OUT_FRAME, "output frame over 16384");
        }
        if let Some((mut block, mut fragment)) = open.take() {
            assert_eq!(f.kind, CONTINUATION, "header block interrupted in output");
            assert_eq!(f.stream, block.stream);
            assert_eq!(f.flags & !END_HEADERS, 0, "stray CONTINUATION flags");
            fragment.extend_from_slice(&f.payload);
            block.frames += 1;
            if f.flags & END_HEADERS != 0 {
                block.fields = decode_fresh(&fragment);
                blocks.push(block);
            } else {
                open = Some((block, fragment));
            }
            continue;
        }
        match f.kind {
            HEADERS => {
                assert_eq!(f.flags & PADDED, 0, "PADDED in output");
                let (priority, fragment) = if f.flags & PRIO != 0 {
                    (
                        Some(f.payload[..5].try_into().unwrap()),
                        f.payload[5..].to_vec(),
                    )
                } else {
                    (None, f.payload.clone())
                };
                let block = Block {
                    stream: f.stream,
                    flags: f.flags,
                    priority,
                    fields: Vec::new(),
                    frames: 1,
                };
                if f.flags & END_HEADERS != 0 {
                    blocks.push(Block {
                        fields: decode_fresh(&fragment),
                        ..block
                    });
                } else {
                    open = Some((block, fragment));
                }
            }
            CONTINUATION => panic!("CONTINUATION without HEADERS in output"),
            _ => others.push(f),
        }
    }
    assert!(open.is_none(), "unterminated header block in output");
    (blocks, others)
}

fn decode_fresh(block: &[u8]) -> Vec<(String, String)> {
    Decoder::new()
        .decode(block)
        .expect("output block must decode without any dynamic table")
        .into_iter()
        .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Driving the adapter
// ---------------------------------------------------------------------------------------------

/// An in-memory client: delivers `data` in reads of at most `chunk` bytes, answering Pending before
/// every other read when `stutter` is set; swallows writes.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
    stutter: bool,
    pending_next: bool,
}

impl Chunked {
    fn new(data: &[u8], chunk: usize, stutter: bool) -> Self {
        Chunked {
            data: data.to_vec(),
            pos: 0,
            chunk: chunk.max(1),
            stutter,
            pending_next: false,
        }
    }
}

impl AsyncRead for Chunked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stutter {
            this.pending_next = !this.pending_next;
            if this.pending_next {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        let n = this
            .chunk
            .min(buf.remaining())
            .min(this.data.len() - this.pos);
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Chunked {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Pushes `input` through the adapter (reads of `chunk` bytes in, reads of `read_size` bytes out)
/// until end of stream or error.
async fn run_with(
    input: &[u8],
    chunk: usize,
    read_size: usize,
    stutter: bool,
) -> io::Result<Vec<u8>> {
    let mut adapter = normalize(Chunked::new(input, chunk, stutter));
    let mut out = Vec::new();
    let mut buf = vec![0u8; read_size.max(1)];
    loop {
        let n = adapter.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Runs `input` with several read patterns (bulk, byte by byte, odd sizes, stuttering) and checks
/// that all give the same result.
async fn run(input: &[u8]) -> io::Result<Vec<u8>> {
    let reference = run_with(input, usize::MAX, 1 << 20, false).await;
    for (chunk, read_size, stutter) in [
        (1, 1, false),
        (1, 64 * 1024, true),
        (64 * 1024, 1, false),
        (7, 5, true),
        (13, 8, false),
        (4096, 100, false),
        (16_000, 16_393, true),
        (100_000, 9, false),
    ] {
        let other = run_with(input, chunk, read_size, stutter).await;
        match (&reference, &other) {
            (Ok(a), Ok(b)) => assert!(
                a == b,
                "output differs with chunk {chunk}, read {read_size}"
            ),
            (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind(), "chunk {chunk}, read {read_size}"),
            (a, b) => panic!(
                "chunk {chunk}, read {read_size}: {:?} vs {:?}",
                a.as_ref().map(|v| v.len()),
                b.as_ref().map(|v| v.len())
            ),
        }
    }
    reference
}

fn expect_invalid(result: io::Result<Vec<u8>>) -> io::Error {
    match result {
        Ok(out) => panic!("malformed input accepted ({} bytes out)", out.len()),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn needs_rewrite_follows_h2_authority_rules() {
    for bad in [
        SOCKET,
        "/var/run/kms.sock",
        "%2Fvar%2Frun%2Fkms.sock", // grpc-go >= 1.57 percent-encodes the path: h2 refuses it too
        "/tmp/x.sock",
        "",
        "a b",
        "host/path",
    ] {
        assert!(needs_rewrite(bad.as_bytes()), "{bad:?} should be rewritten");
    }
    for good in [
        "localhost",
        "@name",
        "@kms-plugin",
        "127.0.0.1:8080",
        "[::1]:443",
        "kms",
    ] {
        assert!(!needs_rewrite(good.as_bytes()), "{good:?} should be kept");
    }
    assert!(needs_rewrite(&[0xff, 0xfe]));
}

#[test]
fn encoder_never_indexes() {
    let mut out = Vec::new();
    crate::rewrite::encode_field(&mut out, b":method", b"POST").unwrap();
    assert_eq!(out, [0x83], "full static match is an indexed field");
    out.clear();
    crate::rewrite::encode_field(&mut out, b":authority", b"localhost").unwrap();
    assert_eq!(
        out, b"\x01\x09localhost",
        "static name, literal without indexing"
    );
    out.clear();
    crate::rewrite::encode_field(&mut out, b"x-a", b"b").unwrap();
    assert_eq!(
        out, b"\x00\x03x-a\x01b",
        "new name, literal without indexing"
    );
}

#[tokio::test]
async fn rewrites_socket_path_authority_and_keeps_other_headers_in_order() {
    for authority in [
        SOCKET,
        "/var/run/kms.sock",
        "%2Fvar%2Frun%2Fkms.sock",
        "localhost",
        "@kms",
    ] {
        let fields = grpc_request(authority, "2999870u");
        let block = encode(&mut Encoder::new(), &fields);
        let input = client_stream(&[frame(HEADERS, END_HEADERS, 1, &block)]);
        let out = run(&input).await.unwrap();
        let (blocks, others) = read_output(&out);
        assert_eq!(others, vec![parse_frames(&settings()).remove(0)]);
        assert_eq!(blocks.len(), 1);
        let expected = if needs_rewrite(authority.as_bytes()) {
            "localhost"
        } else {
            authority
        };
        assert_eq!(
            blocks[0].fields,
            with_authority(&fields, expected),
            "{authority}"
        );
        assert_eq!(blocks[0].stream, 1);
        assert_eq!(blocks[0].flags, END_HEADERS);
    }
    assert!(needs_rewrite(SOCKET.as_bytes()));
}

#[tokio::test]
async fn block_without_authority_is_kept() {
    let fields: Vec<(String, String)> = [("grpc-status", "0"), ("x-trailer", "v")]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let block = encode(&mut Encoder::new(), &fields);
    let input = client_stream(&[frame(HEADERS, END_HEADERS | END_STREAM, 3, &block)]);
    let (blocks, _) = read_output(&run(&input).await.unwrap());
    assert_eq!(blocks[0].fields, fields);
    assert_eq!(blocks[0].flags, END_HEADERS | END_STREAM);
}

#[tokio::test]
async fn huffman_coded_blocks_with_dynamic_references() {
    // RFC 7541 C.4.1 and C.4.2: Huffman-coded literals, the second block indexing the first's entries.
    let first = hex::decode("828684418cf1e3c2e5f23a6ba0ab90f4ff").unwrap();
    let second = hex::decode("828684be5886a8eb10649cbf").unwrap();
    let input = client_stream(&[
        frame(HEADERS, END_HEADERS | END_STREAM, 1, &first),
        frame(HEADERS, END_HEADERS | END_STREAM, 3, &second),
    ]);
    let (blocks, _) = read_output(&run(&input).await.unwrap());
    let expect = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ]
        .iter()
        .chain(extra)
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
    };
    assert_eq!(blocks[0].fields, expect(&[]));
    assert_eq!(blocks[1].fields, expect(&[("cache-control", "no-cache")]));
}

#[tokio::test]
async fn header_block_split_across_continuation_frames() {
    let fields = grpc_request(SOCKET, "1000m");
    let block = encode(&mut Encoder::new(), &fields);
    let (a, rest) = block.split_at(10);
    let (b, c) = rest.split_at(25);
    let input = client_stream(&[
        frame(HEADERS, END_STREAM, 5, a),
        frame(CONTINUATION, 0, 5, b),
        frame(CONTINUATION, 0, 5, &[]),
        frame(CONTINUATION, END_HEADERS, 5, c),
        frame(DATA, END_STREAM, 7, b"after"),
    ]);
    let (blocks, others) = read_output(&run(&input).await.unwrap());
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].fields, with_authority(&fields, "localhost"));
    assert_eq!(blocks[0].stream, 5);
    assert_eq!(blocks[0].flags, END_STREAM | END_HEADERS);
    assert_eq!(blocks[0].frames, 1, "re-encoded block fits one frame");
    assert_eq!(others.last().unwrap().payload, b"after");
}

#[tokio::test]
async fn padded_and_prioritized_headers() {
    let fields = grpc_request(SOCKET, "5S");
    let block = encode(&mut Encoder::new(), &fields);
    let priority = [0x80, 0, 0, 3, 200]; // exclusive, depends on stream 3, weight 201

    // PRIORITY alone, used on a fresh connection below.
    let mut payload3 = priority.to_vec();
    payload3.extend_from_slice(&block);

    // PADDED + PRIORITY, then PADDED (zero padding) split by CONTINUATION, on one connection.
    let mut encoder = Encoder::new();
    let block1 = encode(&mut encoder, &fields);
    let block2 = encode(&mut encoder, &fields); // all indexed now: a few bytes
    let mut p1 = vec![10u8];
    p1.extend_from_slice(&priority);
    p1.extend_from_slice(&block1);
    p1.extend_from_slice(&[0; 10]);
    let mut p2 = vec![0u8];
    p2.extend_from_slice(&block2[..2]);
    let input = client_stream(&[
        frame(HEADERS, PADDED | PRIO | END_HEADERS | END_STREAM, 1, &p1),
        frame(HEADERS, PADDED, 3, &p2),
        frame(CONTINUATION, END_HEADERS, 3, &block2[2..]),
    ]);
    let (blocks, _) = read_output(&run(&input).await.unwrap());
    assert_eq!(blocks.len(), 2);
    assert_eq!(
        blocks[0].flags,
        PRIO | END_HEADERS | END_STREAM,
        "PADDED dropped"
    );
    assert_eq!(blocks[0].priority, Some(priority));
    assert_eq!(blocks[0].fields, with_authority(&fields, "localhost"));
    assert_eq!(blocks[1].flags, END_HEADERS);
    assert_eq!(blocks[1].priority, None);
    assert_eq!(blocks[1].fields, with_authority(&fields, "localhost"));

    // PRIORITY without padding, on a fresh connection.
    let input = client_stream(&[frame(HEADERS, PRIO | END_HEADERS, 9, &payload3)]);
    let (blocks, _) = read_output(&run(&input).await.unwrap());
    assert_eq!(blocks[0].priority, Some(priority));
    assert_eq!(blocks[0].flags, PRIO | END_HEADERS);
    assert_eq!(blocks[0].fields, with_authority(&fields, "localhost"));
}

#[tokio::test]
async fn header_blocks_are_capped_at_16_kib() {
    assert_eq!(
        MAX_BLOCK,
        16 * 1024,
        "the header list size servers advertise (hyper's default, set by the plugin)"
    );
    // A 4000-byte value enters the client's dynamic table once and is then referenced by one-byte
    // indexes: the input block is ~4 KiB, the re-encoded one (all literals) ~40 KiB. With the former
    // 256 KiB cap it went through as 3 frames; now it is refused before it is buffered.
    let big = "v".repeat(4000);
    let mut fields = grpc_request(SOCKET, "1S");
    for _ in 0..10 {
        fields.push(("x-big".to_string(), big.clone()));
    }
    let block = encode(&mut Encoder::new(), &fields);
    assert!(block.len() < MAX_OUT_FRAME);
    let input = client_stream(&[frame(HEADERS, END_HEADERS, 1, &block)]);
    let e = expect_invalid(run(&input).await);
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");

    // 17 KiB as HEADERS + CONTINUATION, each frame legal on its own: refused.
    let fields = with_value(17 * 1024);
    let block = encode(&mut Encoder::new(), &fields);
    let (a, b) = block.split_at(8 * 1024);
    let input = client_stream(&[
        frame(HEADERS, 0, 1, a),
        frame(CONTINUATION, END_HEADERS, 1, b),
    ]);
    let e = expect_invalid(run(&input).await);
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
}

/// Length of the header block the adapter makes of `block` (sent alone, in one HEADERS frame).
async fn reencoded_len(block: &[u8]) -> usize {
    let out = run(&client_stream(&[frame(HEADERS, END_HEADERS, 1, block)]))
        .await
        .unwrap();
    parse_frames(&out[PREFACE.len()..])
        .iter()
        .filter(|f| matches!(f.kind, HEADERS | CONTINUATION))
        .map(|f| f.payload.len())
        .sum()
}

/// A gRPC request (with an acceptable `:authority`) plus one `x-big` field of `len` bytes.
fn with_value(len: usize) -> Vec<(String, String)> {
    let mut fields = grpc_request("localhost", "1S");
    fields.push(("x-big".to_string(), "v".repeat(len)));
    fields
}

#[tokio::test]
async fn block_growing_past_max_frame_size_is_split() {
    // A block that re-encodes to just under the cap, sent with PRIORITY: its 5 bytes push the HEADERS
    // frame past 16384, so the block leaves as HEADERS (full) + CONTINUATION.
    let probe = reencoded_len(&encode(&mut Encoder::new(), &with_value(16_000))).await;
    let target = MAX_BLOCK - 2;
    let fields = with_value(16_000 + target - probe);
    let block = encode(&mut Encoder::new(), &fields);
    assert_eq!(reencoded_len(&block).await, target);
    assert!(block.len() <= MAX_BLOCK, "input {} bytes", block.len());

    let (a, b) = block.split_at(100);
    let mut first = vec![0, 0, 0, 0, 15];
    first.extend_from_slice(a);
    let input = client_stream(&[
        frame(HEADERS, PRIO | END_STREAM, 1, &first),
        frame(CONTINUATION, END_HEADERS, 1, b),
        frame(DATA, 0, 1, b"x"),
    ]);
    let out = run(&input).await.unwrap();
    let (blocks, others) = read_output(&out);
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].frames, 2, "HEADERS + CONTINUATION");
    assert_eq!(
        blocks[0].flags,
        PRIO | END_STREAM,
        "END_HEADERS moves to the last frame"
    );
    assert_eq!(blocks[0].priority, Some([0, 0, 0, 0, 15]));
    assert_eq!(blocks[0].fields, fields);
    assert_eq!(others.last().unwrap().payload, b"x");
    let frames = parse_frames(&out[PREFACE.len()..]);
    let header_frames: Vec<_> = frames
        .iter()
        .filter(|f| matches!(f.kind, HEADERS | CONTINUATION))
        .collect();
    assert_eq!(
        header_frames[0].payload.len(),
        MAX_OUT_FRAME,
        "the first is full"
    );
    assert_eq!(header_frames[0].flags & END_HEADERS, 0);
    assert_eq!(header_frames[1].flags, END_HEADERS);
}

#[tokio::test]
async fn many_streams_reuse_the_client_dynamic_table() {
    let mut encoder = Encoder::new();
    let mut frames = Vec::new();
    let mut expected = Vec::new();
    for i in 0..300u32 {
        let authority = if i % 3 == 0 {
            SOCKET
        } else {
            "/var/run/kms.sock"
        };
        let mut fields = grpc_request(authority, &format!("{}m", 3000 - i));
        fields.push(("x-request".to_string(), format!("r{}", i % 7)));
        let block = encode(&mut encoder, &fields);
        let stream = 2 * i + 1;
        frames.push(frame(HEADERS, END_HEADERS, stream, &block));
        frames.push(frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 2, 10, 0]));
        expected.push(with_authority(&fields, "localhost"));
    }
    let out = run_with(&client_stream(&frames), usize::MAX, 1 << 20, false)
        .await
        .unwrap();
    let (blocks, others) = read_output(&out);
    assert_eq!(blocks.len(), 300);
    for (i, (block, fields)) in blocks.iter().zip(&expected).enumerate() {
        assert_eq!(&block.fields, fields, "request {i}");
        assert_eq!(block.stream, 2 * i as u32 + 1);
    }
    assert_eq!(others.len(), 301);
    // Later input blocks were mostly dynamic-table references, yet decode on their own in the output.
    assert!(frames[200].len() < frames[0].len());
}

#[tokio::test]
async fn dynamic_table_entries_and_size_updates_are_tracked() {
    let path = "/v2.KeyManagementService/Status";
    let literal = |first: u8, value: &str| {
        let mut b = vec![first, value.len() as u8];
        b.extend_from_slice(value.as_bytes());
        b
    };
    // :method POST, :scheme http, :authority SOCKET (literal, incremental indexing -> 62),
    // :path (literal, incremental indexing -> 62, pushing :authority to 63)
    let mut first = vec![0x83, 0x86];
    first.extend(literal(0x41, SOCKET));
    first.extend(literal(0x44, path));
    // Both by dynamic index: :authority (63), :path (62).
    let second = vec![0x83, 0x86, 0x80 | 63, 0x80 | 62];
    // Table size update to 0 (evicts everything), then literals without indexing.
    let mut third = vec![0x20, 0x83, 0x86];
    third.extend(literal(0x01, SOCKET));
    third.extend(literal(0x04, path));
    let fields: Vec<(String, String)> = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "localhost"),
        (":path", path),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();

    let frames = [
        frame(HEADERS, END_HEADERS, 1, &first),
        frame(HEADERS, END_HEADERS, 3, &second),
        frame(HEADERS, END_HEADERS, 5, &third),
    ];
    let (blocks, _) = read_output(&run(&client_stream(&frames)).await.unwrap());
    assert_eq!(blocks.len(), 3);
    assert_eq!(blocks[0].fields, fields);
    assert_eq!(blocks[1].fields, fields);
    assert_eq!(blocks[2].fields, fields);

    // After the size update the old entries are gone: referencing them is an HPACK error.
    let mut after = frames.to_vec();
    after.push(frame(HEADERS, END_HEADERS, 7, &second));
    let e = expect_invalid(run(&client_stream(&after)).await);
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn other_frames_pass_through_byte_for_byte() {
    let mut big = vec![0u8; 40_000];
    for (i, b) in big.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    let padded_data = {
        let mut p = vec![3u8];
        p.extend_from_slice(b"hello");
        p.extend_from_slice(&[0, 0, 0]);
        p
    };
    let others = vec![
        frame(SETTINGS, ACK, 0, &[]),
        frame(WINDOW_UPDATE, 0, 0, &[0, 0x10, 0, 0]),
        frame(PING, 0, 0, b"12345678"),
        frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16]),
        frame(DATA, 0, 1, &big),
        frame(DATA, PADDED | END_STREAM, 1, &padded_data),
        frame(DATA, 0, 1, &[]),
        frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]),
        frame(0xfa, 0xff, 77, b"unknown extension frame"),
        frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]),
    ];
    // Without any HEADERS the output is the input.
    let input = client_stream(&others);
    assert_eq!(run(&input).await.unwrap(), input);

    // With HEADERS in between, the other frames are unchanged and in order.
    let block = encode(&mut Encoder::new(), &grpc_request(SOCKET, "1S"));
    let mut mixed = others.clone();
    mixed.insert(4, frame(HEADERS, END_HEADERS, 1, &block));
    let (blocks, passed) = read_output(&run(&client_stream(&mixed)).await.unwrap());
    assert_eq!(blocks.len(), 1);
    let passed: Vec<Vec<u8>> = passed.iter().skip(1).map(Frame::bytes).collect();
    assert_eq!(passed, others);
}

#[tokio::test]
async fn eof_between_frames_is_clean_and_inside_a_frame_is_an_error() {
    let block = encode(&mut Encoder::new(), &grpc_request(SOCKET, "1S"));
    let input = client_stream(&[
        frame(HEADERS, END_HEADERS, 1, &block),
        frame(DATA, END_STREAM, 1, b"0123456789"),
    ]);
    assert!(run(&input).await.is_ok());
    assert_eq!(run(b"").await.unwrap(), b"");
    let data_start = input.len() - 19;
    let headers_start = PREFACE.len() + settings().len();
    for cut in [
        10,                 // inside the preface
        PREFACE.len() + 4,  // inside a frame header
        headers_start + 12, // inside the HEADERS payload
        data_start + 5,     // inside a DATA frame header
        input.len() - 3,    // inside a DATA payload
    ] {
        let e = expect_invalid(run(&input[..cut]).await);
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
    }
}

#[tokio::test]
async fn malformed_input_is_an_error_not_a_panic() {
    let good_block = encode(&mut Encoder::new(), &grpc_request(SOCKET, "1S"));
    let mut oversized_table_update = loona_hpack::encoder::encode_integer(100_000, 5);
    oversized_table_update[0] |= 0x20;
    oversized_table_update.push(0x82);
    // One 4000-byte entry referenced 70 times: 280 KB decoded from a 4 KB block.
    let mut amplified = encode(&mut Encoder::new(), &[("x-big".into(), "v".repeat(4000))]);
    amplified.extend(std::iter::repeat_n(0x80 | 62, 70));
    let huge_fragment = vec![0x82u8; MAX_OUT_FRAME];

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad preface", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            "CONTINUATION without HEADERS",
            client_stream(&[frame(CONTINUATION, END_HEADERS, 1, &good_block)]),
        ),
        (
            "HEADERS interrupted by DATA",
            client_stream(&[
                frame(HEADERS, 0, 1, &good_block[..5]),
                frame(DATA, 0, 1, b"x"),
            ]),
        ),
        (
            "CONTINUATION on another stream",
            client_stream(&[
                frame(HEADERS, 0, 1, &good_block[..5]),
                frame(CONTINUATION, END_HEADERS, 3, &good_block[5..]),
            ]),
        ),
        (
            "HEADERS inside an open block",
            client_stream(&[
                frame(HEADERS, 0, 1, &good_block[..5]),
                frame(HEADERS, END_HEADERS, 1, &good_block),
            ]),
        ),
        (
            "HEADERS on stream 0",
            client_stream(&[frame(HEADERS, END_HEADERS, 0, &good_block)]),
        ),
        (
            "PUSH_PROMISE from a client",
            client_stream(&[frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2, 0x82])]),
        ),
        (
            "padding longer than payload",
            client_stream(&[frame(HEADERS, PADDED | END_HEADERS, 1, &[200, 0x82, 0x86])]),
        ),
        (
            "PADDED without pad length",
            client_stream(&[frame(HEADERS, PADDED | END_HEADERS, 1, &[])]),
        ),
        (
            "PRIORITY too short",
            client_stream(&[frame(HEADERS, PRIO | END_HEADERS, 1, &[0, 0, 1])]),
        ),
        (
            "HPACK index out of range",
            client_stream(&[frame(HEADERS, END_HEADERS, 1, &[0x82, 0xbe])]),
        ),
        (
            "HPACK integer too long",
            client_stream(&[frame(
                HEADERS,
                END_HEADERS,
                1,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            )]),
        ),
        (
            "HPACK truncated literal",
            client_stream(&[frame(HEADERS, END_HEADERS, 1, &[0x00, 0x05, b'a'])]),
        ),
        (
            "HPACK bad Huffman padding",
            client_stream(&[frame(HEADERS, END_HEADERS, 1, &[0x01, 0x81, 0x00])]),
        ),
        (
            "HPACK table size update at end",
            client_stream(&[frame(HEADERS, END_HEADERS, 1, &[0x82, 0x20])]),
        ),
        (
            "HPACK table size over the cap",
            client_stream(&[frame(HEADERS, END_HEADERS, 1, &oversized_table_update)]),
        ),
        (
            "decoded block over the cap",
            client_stream(&[frame(HEADERS, END_HEADERS, 1, &amplified)]),
        ),
        (
            "single header frame over the cap",
            client_stream(&[frame(HEADERS, END_HEADERS, 1, &vec![0x82; MAX_BLOCK + 1])]),
        ),
    ];
    let mut too_many = vec![frame(HEADERS, 0, 1, &huge_fragment)];
    for _ in 0..(MAX_BLOCK / MAX_OUT_FRAME) {
        too_many.push(frame(CONTINUATION, 0, 1, &huge_fragment));
    }
    cases.push(("CONTINUATIONs over the cap", client_stream(&too_many)));

    for (name, input) in cases {
        let e = expect_invalid(run(&input).await);
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{name}: {e}");
    }
}

#[tokio::test]
async fn a_failed_connection_stays_failed() {
    let input = client_stream(&[
        frame(CONTINUATION, END_HEADERS, 1, &[0x82]),
        frame(PING, 0, 0, b"12345678"),
    ]);
    let mut adapter = normalize(Chunked::new(&input, usize::MAX, false));
    let mut buf = vec![0u8; 1 << 16];
    let mut failures = 0;
    for _ in 0..4 {
        match adapter.read(&mut buf).await {
            Ok(0) => panic!("EOF after an error"),
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                failures += 1;
            }
        }
    }
    assert!(failures >= 3);
}

/// Small deterministic PRNG (xorshift64*), so the fuzz loop needs no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[tokio::test]
async fn random_input_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut encoder = Encoder::new();
    let valid_frames: Vec<Vec<u8>> = (0..6)
        .flat_map(|i| {
            let block = encode(&mut encoder, &grpc_request(SOCKET, &format!("{i}S")));
            [
                frame(HEADERS, END_HEADERS, 2 * i + 1, &block),
                frame(DATA, END_STREAM, 2 * i + 1, b"payload"),
            ]
        })
        .collect();
    let valid = client_stream(&valid_frames);
    let mut outcomes = [0usize; 2];
    for case in 0..3000 {
        let input = match case % 4 {
            // Pure noise, with and without a preface.
            0 => {
                let n = rng.below(600);
                rng.bytes(n)
            }
            1 => {
                let mut s = PREFACE.to_vec();
                let n = rng.below(2000);
                s.extend(rng.bytes(n));
                s
            }
            // A valid stream with a few bytes flipped after the preface.
            2 => {
                let mut s = valid.clone();
                for _ in 0..1 + rng.below(4) {
                    let i = PREFACE.len() + rng.below(s.len() - PREFACE.len());
                    s[i] = rng.next() as u8;
                }
                s
            }
            // Random frames of the interesting types with random flags and payloads.
            _ => {
                let frames: Vec<Vec<u8>> = (0..1 + rng.below(6))
                    .map(|_| {
                        let kind =
                            [HEADERS, CONTINUATION, DATA, PRIORITY, SETTINGS, 0xfa][rng.below(6)];
                        let len = rng.below(64);
                        let payload = rng.bytes(len);
                        frame(kind, rng.next() as u8, rng.below(4) as u32, &payload)
                    })
                    .collect();
                client_stream(&frames)
            }
        };
        let chunk = 1 + rng.below(64);
        let read_size = 1 + rng.below(100);
        let result = run_with(&input, chunk, read_size, case % 2 == 0).await;
        outcomes[usize::from(result.is_ok())] += 1;
    }
    // Both paths were exercised.
    assert!(outcomes[0] > 100 && outcomes[1] > 100, "{outcomes:?}");
}

type RawFields = Vec<(Vec<u8>, Vec<u8>)>;

/// Decodes a sequence of blocks with one decoder (table size `table`): the fields of each, or the
/// first error.
fn decode_all(blocks: &[Vec<u8>], table: usize) -> Result<Vec<RawFields>, String> {
    let mut decoder = Decoder::new();
    decoder.set_max_table_size(table);
    blocks
        .iter()
        .map(|b| decoder.decode(b).map_err(|e| e.to_string()))
        .collect()
}

/// The Huffman pre-pass must be invisible: the decoder gives the same fields (and the same dynamic
/// table, seen through later blocks) with or without it, and fails on the same inputs.
fn assert_unhuffman_transparent(blocks: &[Vec<u8>], table: usize) -> bool {
    let mut plain = Vec::new();
    let mut converted = Vec::new();
    for b in blocks {
        match crate::unhuffman::unhuffman(b, &mut plain) {
            Ok(true) => converted.push(plain.clone()),
            Ok(false) => converted.push(b.clone()),
            Err(_) => {
                assert!(
                    decode_all(blocks, table).is_err(),
                    "pre-pass refused a valid block"
                );
                return false;
            }
        }
    }
    let direct = decode_all(blocks, table);
    let via = decode_all(&converted, table);
    match (&direct, &via) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        _ => panic!("pre-pass changed the outcome: {direct:?} vs {via:?}"),
    }
    direct.is_ok()
}

#[test]
fn unhuffman_is_transparent_to_the_decoder() {
    // RFC 7541 C.4 (requests) and C.6 (responses, 256-byte table, evictions), Huffman-coded.
    let c4: Vec<Vec<u8>> = [
        "828684418cf1e3c2e5f23a6ba0ab90f4ff",
        "828684be5886a8eb10649cbf",
        "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
    ]
    .iter()
    .map(|h| hex::decode(h).unwrap())
    .collect();
    assert!(assert_unhuffman_transparent(&c4, 4096));
    let c6: Vec<Vec<u8>> = [
        "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
        "4883640effc1c0bf",
        "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
    ]
    .iter()
    .map(|h| hex::decode(h).unwrap())
    .collect();
    assert!(assert_unhuffman_transparent(&c6, 256));
    let fields = decode_all(&c6, 256).unwrap();
    assert_eq!(fields[0][0], (b":status".to_vec(), b"302".to_vec()));
    assert_eq!(fields[2][5].0, b"set-cookie".to_vec());

    // Raw-only blocks come back untouched.
    let raw = encode(&mut Encoder::new(), &grpc_request(SOCKET, "1S"));
    let mut out = Vec::new();
    assert!(!crate::unhuffman::unhuffman(&raw, &mut out).unwrap());

    // Mutations of the Huffman blocks and noise: same outcome either way, never a panic.
    let mut rng = Rng(42);
    let mut ok = 0;
    for case in 0..4000 {
        let mut blocks = if case % 2 == 0 {
            c4.clone()
        } else {
            c6.clone()
        };
        let table = if case % 2 == 0 { 4096 } else { 256 };
        if case % 5 == 4 {
            let n = rng.below(40);
            blocks[rng.below(3)] = rng.bytes(n);
        } else {
            for _ in 0..1 + rng.below(3) {
                let b = rng.below(3);
                if blocks[b].is_empty() {
                    continue;
                }
                let i = rng.below(blocks[b].len());
                match rng.below(3) {
                    0 => blocks[b][i] = rng.next() as u8,
                    1 => blocks[b][i] ^= 1 << rng.below(8),
                    _ => blocks[b].truncate(i),
                }
            }
        }
        ok += usize::from(assert_unhuffman_transparent(&blocks, table));
    }
    assert!(ok > 100, "too few mutated blocks still valid: {ok}");
}

#[test]
fn core_step_contract() {
    let mut rw = Rewriter::new();
    assert!(rw.at_boundary());
    assert_eq!(rw.step(&PREFACE[..5], usize::MAX).unwrap(), Step::Pass(5));
    assert!(!rw.at_boundary());
    assert_eq!(rw.step(&PREFACE[5..], 3).unwrap(), Step::Pass(3));
    assert_eq!(rw.step(&PREFACE[8..], usize::MAX).unwrap(), Step::Pass(16));
    assert!(rw.at_boundary());
    let ping = frame(PING, 0, 0, b"12345678");
    assert_eq!(rw.step(&ping[..8], usize::MAX).unwrap(), Step::More);
    // Too little room for the frame header: it is staged instead.
    assert_eq!(rw.step(&ping, 4).unwrap(), Step::Took(9));
    assert_eq!(rw.staged(), &ping[..9]);
    rw.consume_staged(9);
    assert_eq!(rw.step(&ping[9..], usize::MAX).unwrap(), Step::Pass(8));
    let block = encode(&mut Encoder::new(), &grpc_request(SOCKET, "1S"));
    let headers = frame(HEADERS, END_HEADERS, 1, &block);
    assert_eq!(rw.step(&headers[..20], usize::MAX).unwrap(), Step::More);
    assert_eq!(
        rw.step(&headers, usize::MAX).unwrap(),
        Step::Took(headers.len())
    );
    assert!(!rw.staged().is_empty());
    assert_eq!(rw.rewritten(), 1);
}

#[test]
fn adapter_is_a_tonic_connection() {
    fn check<T: AsyncRead + AsyncWrite + Send + Unpin + 'static + Connected>() {}
    check::<Normalized<tokio::net::UnixStream>>();
    check::<Normalized<tokio::io::DuplexStream>>();
}

// ---------------------------------------------------------------------------------------------
// End to end with h2: the problem is real, and the adapter solves it
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The server got the request (with this :authority) and answered with this :status.
    Answered { authority: String, status: String },
    /// The server reset the stream with this error code.
    Reset(u32),
}

/// An `h2` server on `io` that records each request's authority and answers 200.
async fn h2_server<T>(io: T, seen: tokio::sync::mpsc::UnboundedSender<String>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let _ = seen.send(authority);
        let response = http::Response::builder().status(200).body(()).unwrap();
        let _ = respond.send_response(response, true);
    }
}

/// Sends one gRPC-style request with `authority` from a raw client, as grpc-go would, to an `h2`
/// server behind the adapter (or not), and reports what came back on stream 1.
async fn h2_roundtrip(authority: &str, with_adapter: bool) -> Outcome {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server_task = if with_adapter {
        tokio::spawn(h2_server(normalize(server), tx))
    } else {
        tokio::spawn(h2_server(server, tx))
    };

    let mut fields = grpc_request(authority, "2999870u");
    fields[2].1 = "/v1beta1.KeyManagementService/Version".to_string();
    let block = encode(&mut Encoder::new(), &fields);
    let input = client_stream(&[frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)]);
    client.write_all(&input).await.unwrap();

    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        let mut received = Vec::new();
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "server closed the connection");
            received.extend_from_slice(&buf[..n]);
            // Look at the complete frames so far.
            let mut rest = &received[..];
            while rest.len() >= 9 {
                let len = (rest[0] as usize) << 16 | (rest[1] as usize) << 8 | rest[2] as usize;
                if rest.len() < 9 + len {
                    break;
                }
                let f = parse_frames(&rest[..9 + len]).remove(0);
                rest = &rest[9 + len..];
                if f.kind == HEADERS && f.stream == 1 {
                    let fields = decoder.decode(&f.payload).unwrap();
                    let status = fields
                        .iter()
                        .find(|(n, _)| n == b":status")
                        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
                        .unwrap_or_default();
                    let authority = rx.recv().await.unwrap_or_default();
                    return Outcome::Answered { authority, status };
                }
                if f.kind == RST_STREAM && f.stream == 1 {
                    return Outcome::Reset(u32::from_be_bytes(f.payload[..4].try_into().unwrap()));
                }
                assert_ne!(f.kind, GOAWAY, "server sent GOAWAY: {:?}", f.payload);
            }
        }
    })
    .await
    .expect("no answer from the h2 server");
    server_task.abort();
    outcome
}

/// A real HPACK encoder (`h2`'s client: Huffman-coded literals, incremental indexing, evictions)
/// through the adapter to an `h2` server: every request arrives with exactly the headers sent.
#[tokio::test]
async fn h2_client_requests_survive_the_adapter() {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        let mut conn = h2::server::handshake(normalize(server_io)).await.unwrap();
        while let Some(Ok((request, mut respond))) = conn.accept().await {
            let _ = tx.send(request.headers().clone());
            let response = http::Response::builder().status(200).body(()).unwrap();
            let _ = respond.send_response(response, true);
        }
    });
    let (mut client, conn) = h2::client::handshake(client_io).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut rng = Rng(7);
    for i in 0..200usize {
        let mut request = http::Request::builder()
            .method("POST")
            .uri("http://localhost/v2.KeyManagementService/Encrypt")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", format!("{}m", 3000 - i));
        // Values of varied length (some large enough to evict the dynamic table) and content.
        let len = [3, 40, 900, 2500][rng.below(4)];
        let value: String = (0..len)
            .map(|_| b"abcdefghijklmnopqrstuvwxyz0123456789-_.~/%"[rng.below(42)] as char)
            .collect();
        request = request.header(format!("x-v{}", i % 5), value);
        let request = request.body(()).unwrap();
        let sent = request.headers().clone();
        client = client.ready().await.unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(rx.recv().await.unwrap(), sent, "request {i}");
    }
    driver.abort();
    server.abort();
}

#[tokio::test]
async fn h2_resets_socket_path_authority_without_the_adapter() {
    const PROTOCOL_ERROR: u32 = 1;
    for authority in [SOCKET, "/var/run/kms.sock", "%2Fvar%2Frun%2Fkms.sock"] {
        assert_eq!(
            h2_roundtrip(authority, false).await,
            Outcome::Reset(PROTOCOL_ERROR),
            "{authority}"
        );
    }
}

#[tokio::test]
async fn h2_accepts_socket_path_authority_through_the_adapter() {
    for authority in [
        SOCKET,
        "/var/run/kms.sock",
        "%2Fvar%2Frun%2Fkms.sock",
        "localhost",
        "@kms",
    ] {
        let expected = if needs_rewrite(authority.as_bytes()) {
            "localhost".to_string()
        } else {
            authority.to_string()
        };
        assert_eq!(
            h2_roundtrip(authority, true).await,
            Outcome::Answered {
                authority: expected,
                status: "200".to_string()
            },
            "{authority}"
        );
    }
    // Valid authorities work with or without it.
    for authority in ["localhost", "@kms"] {
        assert!(matches!(
            h2_roundtrip(authority, false).await,
            Outcome::Answered { .. }
        ));
    }
}
