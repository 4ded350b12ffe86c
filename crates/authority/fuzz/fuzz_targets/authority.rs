//! The HTTP/2 `:authority` adapter (`gm_kms_authority::normalize`) over arbitrary client bytes.
//!
//! Input: `[mode, chunk, stream…]`. `mode` bit 0 prefixes the stream with the valid client preface (so half
//! the inputs get past it), bits 1–4 pick the size of the reads made through the adapter, bit 7 makes the
//! client answer `Pending` before every other read; `chunk` picks how many bytes the client hands over
//! per read. The stream is read through the adapter until end of stream or error, polled by hand (no
//! runtime: every `Pending` must come from the client).
//!
//! Checked: no panic; no hang (every poll makes progress); bounded output (each output byte traces back
//! to the input: at most `n·(2n+64)+1024` bytes for `n` input bytes); the same result read in bulk;
//! an error is sticky; and what comes out is well-formed where it is complete: header blocks are
//! contiguous HEADERS+CONTINUATION frames of at most 16384 bytes without padding, decode with a fresh
//! HPACK decoder, and carry only `:authority` values that `h2` accepts.
#![no_main]

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use gm_kms_authority::{needs_rewrite, normalize};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const READ_SIZES: [usize; 16] = [
    1, 2, 3, 5, 8, 9, 10, 17, 64, 100, 1000, 4096, 8192, 16_384, 16_393, 65_536,
];
/// Hard stop, whatever the input: far above any output this target's input sizes can bound.
const HARD_OUTPUT_CAP: usize = 256 << 20;

/// An in-memory client connection: hands over `chunk` bytes per read, optionally after a `Pending`.
struct Client<'a> {
    data: &'a [u8],
    chunk: usize,
    stutter: bool,
    pending_next: bool,
    /// Set when a poll answered Pending (the only licence for the adapter to do the same).
    pended: &'a Cell<bool>,
}

impl AsyncRead for Client<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stutter {
            this.pending_next = !this.pending_next;
            if this.pending_next {
                this.pended.set(true);
                return Poll::Pending;
            }
        }
        let n = this.chunk.min(buf.remaining()).min(this.data.len());
        let (head, tail) = this.data.split_at(n);
        buf.put_slice(head);
        this.data = tail;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client<'_> {
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

/// Reads `stream` through the adapter; the output so far and how it ended.
fn run(
    stream: &[u8],
    chunk: usize,
    read_size: usize,
    stutter: bool,
) -> (Vec<u8>, Option<io::Error>) {
    let n = stream.len();
    let bound = n
        .saturating_mul(2 * n + 64)
        .saturating_add(1024)
        .min(HARD_OUTPUT_CAP);
    let pended = Cell::new(false);
    let mut adapter = normalize(Client {
        data: stream,
        chunk: chunk.max(1),
        stutter,
        pending_next: false,
        pended: &pended,
    });
    // One read buffer for all runs (a fresh large allocation per run costs more than the adapter).
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 65_536]);
    }
    let mut storage = BUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
    storage.resize(65_536, 0);
    let result = read_all(&mut adapter, &mut storage[..read_size], &pended, n, bound);
    BUF.with(|b| *b.borrow_mut() = storage);
    result
}

fn read_all(
    adapter: &mut gm_kms_authority::Normalized<Client<'_>>,
    buf: &mut [u8],
    pended: &Cell<bool>,
    n: usize,
    bound: usize,
) -> (Vec<u8>, Option<io::Error>) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut polls = 0usize;
    loop {
        polls += 1;
        // Each poll forwards a byte, consumes input, or passes on a client Pending (every other read).
        assert!(
            polls <= 4 * (n + out.len()) + 64,
            "no progress: {polls} polls for {n} bytes in, {} out",
            out.len()
        );
        let mut rb = ReadBuf::new(&mut *buf);
        pended.set(false);
        match Pin::new(&mut *adapter).poll_read(&mut cx, &mut rb) {
            Poll::Pending => {
                assert!(pended.get(), "Pending without a Pending client");
            }
            Poll::Ready(Ok(())) => {
                let got = rb.filled();
                if got.is_empty() {
                    assert!(
                        adapter.get_ref().data.is_empty(),
                        "end of stream reported with client bytes unread"
                    );
                    return (out, None);
                }
                out.extend_from_slice(got);
                assert!(
                    out.len() <= bound,
                    "output {} bytes for {n} bytes in (bound {bound})",
                    out.len()
                );
            }
            Poll::Ready(Err(e)) => {
                // An error is final: reading again errs again (after a client Pending or two).
                let again = (0..3).find_map(|_| {
                    let mut rb = ReadBuf::new(&mut *buf);
                    pended.set(false);
                    match Pin::new(&mut *adapter).poll_read(&mut cx, &mut rb) {
                        Poll::Pending if pended.get() => None,
                        other => Some(other),
                    }
                });
                match again {
                    Some(Poll::Ready(Err(_))) => {}
                    other => panic!("read after an error ({e}) gave {other:?}"),
                }
                return (out, Some(e));
            }
        }
    }
}

/// Walks the complete frames of the output after the preface and checks the header blocks.
fn check_output(out: &[u8]) {
    let Some(mut rest) = out.strip_prefix(PREFACE.as_slice()) else {
        // Nothing is forwarded before the whole preface has been seen... byte by byte, it is: the output
        // is then a prefix of the preface.
        assert!(
            PREFACE.starts_with(out),
            "output does not start with the preface"
        );
        return;
    };
    let mut block: Option<(u32, Vec<u8>)> = None;
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let (kind, flags) = (rest[3], rest[4]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        let Some(payload) = rest.get(9..9 + len) else {
            break; // a frame cut by the end of the output (error or client EOF mid-frame)
        };
        rest = &rest[9 + len..];
        match kind {
            0x1 | 0x9 => {
                assert!(len <= 16_384, "header frame of {len} bytes emitted");
                assert_eq!(flags & 0x8, 0, "PADDED header frame emitted");
                let fragment = if kind == 0x1 {
                    assert!(block.is_none(), "HEADERS inside an open header block");
                    assert_ne!(stream, 0, "HEADERS on stream 0 emitted");
                    if flags & 0x20 != 0 {
                        &payload[5..]
                    } else {
                        payload
                    }
                } else {
                    let (open_stream, _) = block.as_ref().expect("CONTINUATION without HEADERS");
                    assert_eq!(*open_stream, stream, "CONTINUATION on another stream");
                    payload
                };
                let (_, buf) = block.get_or_insert_with(|| (stream, Vec::new()));
                buf.extend_from_slice(fragment);
                if flags & 0x4 != 0 {
                    let (_, buf) = block.take().expect("open block");
                    let fields = loona_hpack::Decoder::new()
                        .decode(&buf)
                        .expect("emitted header block must decode with an empty dynamic table");
                    for (name, value) in fields {
                        if name == b":authority" {
                            assert!(
                                !needs_rewrite(&value),
                                "invalid :authority {value:?} emitted"
                            );
                        }
                    }
                }
            }
            _ => assert!(
                block.is_none(),
                "frame type {kind} inside an open header block"
            ),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, chunk, stream @ ..] = data else {
        return;
    };
    let mut input;
    let stream = if mode & 1 != 0 {
        input = PREFACE.to_vec();
        input.extend_from_slice(stream);
        &input[..]
    } else {
        stream
    };
    let read_size = READ_SIZES[usize::from(mode >> 1 & 0xf)];
    let chunk = match *chunk {
        0 => usize::MAX,
        c @ 1..=127 => usize::from(c),
        c => usize::from(c - 127) * 512,
    };
    let stutter = mode & 0x80 != 0;

    let (out, err) = run(stream, chunk, read_size, stutter);
    check_output(&out);
    // However the bytes are cut, the adapter says the same: reference run in bulk.
    let (bulk_out, bulk_err) = run(stream, usize::MAX, 65_536, false);
    match (&err, &bulk_err) {
        (None, None) => assert!(out == bulk_out, "output depends on how the input is cut"),
        (Some(a), Some(b)) => assert_eq!(a.kind(), b.kind()),
        (a, b) => panic!("read pattern changed the outcome: {a:?} vs {b:?}"),
    }
});
