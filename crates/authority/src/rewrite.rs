//! The sans-IO core of the adapter: an HTTP/2 client-to-server frame scanner that rewrites header
//! blocks and lets every other byte through.
//!
//! [`Rewriter::step`] looks at the front of the not-yet-forwarded client bytes and answers what to do
//! with them ([`Step`]). Bytes it passes stay where they are (the caller forwards them without a copy);
//! complete header blocks are taken in, HPACK-decoded with the client's dynamic table, re-encoded
//! without indexing and staged as new HEADERS/CONTINUATION frames ([`Rewriter::staged`]).
//!
//! Every error poisons the rewriter: the connection is closed, never resynchronised.

use std::borrow::Cow;
use std::io;
use std::sync::OnceLock;

use loona_hpack::Decoder;
use loona_hpack::encoder::encode_integer_into;

use crate::unhuffman::unhuffman;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header (RFC 9113 §4.1).
pub(crate) const FRAME_HEADER_LEN: usize = 9;
/// Largest frame the adapter emits: the minimum SETTINGS_MAX_FRAME_SIZE every peer must accept.
pub(crate) const MAX_OUT_FRAME: usize = 16_384;
/// Cap on a header block, both as received (all fragments together) and as re-encoded: 16 KiB, the
/// header list size servers advertise by default (hyper's SETTINGS_MAX_HEADER_LIST_SIZE, which the plugin
/// sets explicitly) and the largest frame they accept. A re-encoded field (a literal without indexing)
/// never takes more bytes than the 32 + name + value it counts for in a header list, so no block the
/// server would accept is refused here; and a block that references the client's dynamic table over and
/// over (a few KiB that decode to megabytes) is cut off at 16 KiB instead of being buffered.
pub(crate) const MAX_BLOCK: usize = 16 * 1024;
/// Cap on the client's HPACK dynamic table. The server's SETTINGS_HEADER_TABLE_SIZE is 4096 unless
/// configured otherwise (tonic does not); a client asking for more than this is cut off.
const MAX_TABLE_SIZE: usize = 64 * 1024;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// The value every rewritten `:authority` gets.
pub(crate) const LOCALHOST: &[u8] = b"localhost";

/// What to do with the front of the input given to [`Rewriter::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Forward the first `n` bytes unchanged (the rewriter has accounted for them).
    Pass(usize),
    /// The first `n` bytes were taken in; forward [`Rewriter::staged`] before anything else.
    Took(usize),
    /// Nothing can be decided before more bytes arrive; nothing was consumed.
    More,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside the 24-byte client preface; `seen` bytes of it checked so far.
    Preface { seen: usize },
    /// At a frame boundary.
    FrameHead,
    /// Inside the payload of a frame that passes through; `remaining` > 0.
    Payload { remaining: usize },
    /// A header block is open: only CONTINUATION frames on its stream may follow.
    Continuation,
    /// An error was reported; the connection is dead.
    Failed,
}

/// The scanner and rewriter of one connection's client-to-server bytes.
pub(crate) struct Rewriter {
    state: State,
    decoder: Decoder<'static>,
    /// The open header block (HEADERS + CONTINUATION fragments), while in [`State::Continuation`].
    fragment: Vec<u8>,
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    /// Scratch for the header block with its Huffman-coded strings decoded.
    plain: Vec<u8>,
    /// Scratch for the re-encoded header block.
    encoded: Vec<u8>,
    /// Frames waiting to be forwarded, from `staged_pos` on.
    staged: Vec<u8>,
    staged_pos: usize,
    /// How many `:authority` values were rewritten (for tests and diagnostics).
    rewritten: u64,
}

impl Rewriter {
    pub(crate) fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE_SIZE);
        Rewriter {
            state: State::Preface { seen: 0 },
            decoder,
            fragment: Vec::new(),
            stream_id: 0,
            end_stream: false,
            priority: None,
            plain: Vec::new(),
            encoded: Vec::new(),
            staged: Vec::new(),
            staged_pos: 0,
            rewritten: 0,
        }
    }

    /// Bytes waiting to be forwarded ahead of any further input.
    pub(crate) fn staged(&self) -> &[u8] {
        self.staged.get(self.staged_pos..).unwrap_or_default()
    }

    /// Marks the first `n` bytes of [`Self::staged`] as forwarded.
    pub(crate) fn consume_staged(&mut self, n: usize) {
        self.staged_pos = self.staged_pos.saturating_add(n).min(self.staged.len());
        if self.staged_pos == self.staged.len() {
            self.staged.clear();
            self.staged_pos = 0;
        }
    }

    /// True where the client may cleanly end the connection: before it sent anything, or between
    /// frames with no header block open.
    pub(crate) fn at_boundary(&self) -> bool {
        matches!(self.state, State::FrameHead | State::Preface { seen: 0 })
    }

    /// True once an error was reported.
    pub(crate) fn is_failed(&self) -> bool {
        self.state == State::Failed
    }

    /// How many `:authority` values this connection had rewritten.
    pub(crate) fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Decides what happens to the front of `input`, the client bytes not yet forwarded. At most
    /// `pass_limit` bytes are passed in one step (the room the reader has, where the bytes have to be
    /// copied; `usize::MAX` where they already sit in the reader's buffer).
    pub(crate) fn step(&mut self, input: &[u8], pass_limit: usize) -> io::Result<Step> {
        let result = self.step_inner(input, pass_limit);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn step_inner(&mut self, input: &[u8], pass_limit: usize) -> io::Result<Step> {
        if input.is_empty() {
            return Ok(Step::More);
        }
        match self.state {
            State::Failed => Err(malformed("connection already failed")),
            State::Preface { seen } => {
                let expected = PREFACE.get(seen..).unwrap_or_default();
                let n = expected.len().min(input.len()).min(pass_limit);
                if input.get(..n) != expected.get(..n) {
                    return Err(malformed("not an HTTP/2 client preface"));
                }
                let seen = seen.saturating_add(n);
                self.state = if seen >= PREFACE.len() {
                    State::FrameHead
                } else {
                    State::Preface { seen }
                };
                Ok(Step::Pass(n))
            }
            State::Payload { remaining } => {
                let n = remaining.min(input.len()).min(pass_limit);
                let remaining = remaining.saturating_sub(n);
                self.state = if remaining == 0 {
                    State::FrameHead
                } else {
                    State::Payload { remaining }
                };
                Ok(Step::Pass(n))
            }
            State::FrameHead | State::Continuation => self.frame(input, pass_limit),
        }
    }

    /// At a frame boundary: classify the frame that starts `input`.
    fn frame(&mut self, input: &[u8], pass_limit: usize) -> io::Result<Step> {
        let Some(head) = input.get(..FRAME_HEADER_LEN) else {
            return Ok(Step::More);
        };
        let head = FrameHead::parse(head)?;
        let in_block = self.state == State::Continuation;

        if in_block && (head.kind != TYPE_CONTINUATION || head.stream_id != self.stream_id) {
            return Err(malformed("header block interrupted by another frame"));
        }
        match head.kind {
            TYPE_HEADERS | TYPE_CONTINUATION => {
                if head.len > MAX_BLOCK {
                    return Err(malformed("header frame too large"));
                }
                let total = FRAME_HEADER_LEN.saturating_add(head.len);
                let Some(payload) = input.get(FRAME_HEADER_LEN..total) else {
                    return Ok(Step::More);
                };
                if head.kind == TYPE_HEADERS {
                    self.headers(&head, payload)?;
                } else if in_block {
                    self.continuation(&head, payload)?;
                } else {
                    return Err(malformed("CONTINUATION without HEADERS"));
                }
                Ok(Step::Took(total))
            }
            TYPE_PUSH_PROMISE => Err(malformed("PUSH_PROMISE from a client")),
            _ => {
                self.state = if head.len == 0 {
                    State::FrameHead
                } else {
                    State::Payload {
                        remaining: head.len,
                    }
                };
                if pass_limit >= FRAME_HEADER_LEN {
                    Ok(Step::Pass(FRAME_HEADER_LEN))
                } else {
                    // The reader has too little room for the frame header: stage it instead.
                    self.staged.extend_from_slice(head.raw);
                    Ok(Step::Took(FRAME_HEADER_LEN))
                }
            }
        }
    }

    fn headers(&mut self, head: &FrameHead<'_>, payload: &[u8]) -> io::Result<()> {
        if head.stream_id == 0 {
            return Err(malformed("HEADERS on stream 0"));
        }
        let mut rest = payload;
        let mut padding = 0usize;
        if head.flags & FLAG_PADDED != 0 {
            let (&pad, after) = rest
                .split_first()
                .ok_or_else(|| malformed("PADDED HEADERS without a pad length"))?;
            padding = usize::from(pad);
            rest = after;
        }
        self.priority = None;
        if head.flags & FLAG_PRIORITY != 0 {
            let (priority, after) = rest
                .split_at_checked(5)
                .ok_or_else(|| malformed("PRIORITY HEADERS too short"))?;
            let mut fields = [0u8; 5];
            fields.copy_from_slice(priority);
            self.priority = Some(fields);
            rest = after;
        }
        let fragment_len = rest
            .len()
            .checked_sub(padding)
            .ok_or_else(|| malformed("HEADERS padding longer than the payload"))?;
        let fragment = rest
            .get(..fragment_len)
            .ok_or_else(|| malformed("HEADERS padding longer than the payload"))?;
        self.stream_id = head.stream_id;
        self.end_stream = head.flags & FLAG_END_STREAM != 0;

        if head.flags & FLAG_END_HEADERS != 0 {
            // The usual case: the whole block in one frame, decoded straight from the input.
            self.finish(fragment)
        } else {
            self.fragment.clear();
            self.fragment.extend_from_slice(fragment);
            self.state = State::Continuation;
            Ok(())
        }
    }

    fn continuation(&mut self, head: &FrameHead<'_>, payload: &[u8]) -> io::Result<()> {
        if self.fragment.len().saturating_add(payload.len()) > MAX_BLOCK {
            return Err(malformed("header block too large"));
        }
        self.fragment.extend_from_slice(payload);
        if head.flags & FLAG_END_HEADERS != 0 {
            let block = std::mem::take(&mut self.fragment);
            let result = self.finish(&block);
            self.fragment = block;
            self.fragment.clear();
            result
        } else {
            Ok(())
        }
    }

    /// A complete header block: decode, rewrite, re-encode, stage as frames.
    fn finish(&mut self, block: &[u8]) -> io::Result<()> {
        let Rewriter {
            decoder,
            encoded,
            rewritten,
            plain,
            ..
        } = self;
        let block: &[u8] = if unhuffman(block, plain)? {
            plain
        } else {
            block
        };
        encoded.clear();
        let mut too_large = false;
        let mut write_error = None;
        decoder
            .decode_with_cb(block, |name: Cow<'_, [u8]>, value: Cow<'_, [u8]>| {
                if too_large || write_error.is_some() {
                    return;
                }
                let value: &[u8] = if *name == *b":authority" && crate::needs_rewrite(&value) {
                    *rewritten = rewritten.saturating_add(1);
                    LOCALHOST
                } else {
                    &value
                };
                if let Err(e) = encode_field(encoded, &name, value) {
                    write_error = Some(e);
                }
                too_large = encoded.len() > MAX_BLOCK;
            })
            .map_err(|e| malformed(format!("HPACK: {e}")))?;
        if let Some(e) = write_error {
            return Err(e);
        }
        if too_large {
            return Err(malformed("decoded header block too large"));
        }
        self.stage_block();
        self.state = State::FrameHead;
        Ok(())
    }

    /// Frames `self.encoded` as HEADERS (+ CONTINUATION) of at most [`MAX_OUT_FRAME`] bytes each.
    /// PADDED is dropped; END_STREAM and PRIORITY are kept on the HEADERS frame.
    fn stage_block(&mut self) {
        let Rewriter {
            encoded,
            staged,
            priority,
            stream_id,
            end_stream,
            ..
        } = self;
        let block: &[u8] = encoded;
        let priority_len = if priority.is_some() { 5 } else { 0 };
        let (first, mut rest) = block.split_at(block.len().min(MAX_OUT_FRAME - priority_len));

        let mut flags = 0;
        if *end_stream {
            flags |= FLAG_END_STREAM;
        }
        if priority.is_some() {
            flags |= FLAG_PRIORITY;
        }
        if rest.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        staged.reserve(
            block.len() + priority_len + FRAME_HEADER_LEN * (2 + block.len() / MAX_OUT_FRAME),
        );
        put_frame_head(
            staged,
            first.len() + priority_len,
            TYPE_HEADERS,
            flags,
            *stream_id,
        );
        if let Some(priority) = priority {
            staged.extend_from_slice(priority);
        }
        staged.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(rest.len().min(MAX_OUT_FRAME));
            rest = after;
            let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
            put_frame_head(staged, chunk.len(), TYPE_CONTINUATION, flags, *stream_id);
            staged.extend_from_slice(chunk);
        }
    }
}

/// A parsed frame header.
struct FrameHead<'a> {
    raw: &'a [u8],
    len: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

impl<'a> FrameHead<'a> {
    fn parse(raw: &'a [u8]) -> io::Result<Self> {
        match *raw {
            [l0, l1, l2, kind, flags, s0, s1, s2, s3] => Ok(FrameHead {
                raw,
                len: usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2),
                kind,
                flags,
                stream_id: u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff,
            }),
            _ => Err(malformed("short frame header")),
        }
    }
}

fn put_frame_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream_id: u32) {
    // len <= MAX_OUT_FRAME < 2^24
    let len = u32::try_from(len).unwrap_or(0).to_be_bytes();
    let [_, l0, l1, l2] = len;
    out.extend_from_slice(&[l0, l1, l2, kind, flags]);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
}

/// Encodes one header field without touching any dynamic table: a static-table index where name and
/// value both match, else a literal without indexing (RFC 7541 §6.2.2), with the name indexed from the
/// static table where it is there. Strings are sent raw (Huffman coding is optional).
pub(crate) fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) -> io::Result<()> {
    match static_lookup(name, value) {
        Some((index, true)) => encode_integer_into(index, 7, 0x80, out),
        Some((index, false)) => {
            encode_integer_into(index, 4, 0x00, out)?;
            encode_string(out, value)
        }
        None => {
            out.push(0x00);
            encode_string(out, name)?;
            encode_string(out, value)
        }
    }
}

fn encode_string(out: &mut Vec<u8>, s: &[u8]) -> io::Result<()> {
    encode_integer_into(s.len(), 7, 0x00, out)?;
    out.extend_from_slice(s);
    Ok(())
}

/// The HPACK static table (RFC 7541 Appendix A), read once from the HPACK crate's own decoder so that
/// it is not restated here.
fn static_table() -> &'static [(Vec<u8>, Vec<u8>)] {
    static TABLE: OnceLock<Vec<(Vec<u8>, Vec<u8>)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = Vec::with_capacity(61);
        for index in 1u8..=61 {
            let mut decoder = Decoder::new();
            match decoder.decode(&[0x80 | index]) {
                Ok(mut fields) if fields.len() == 1 => table.extend(fields.pop()),
                // Cannot happen with a conforming HPACK crate; stop at the first gap so that the
                // position of every entry stays its index.
                _ => break,
            }
        }
        table
    })
}

/// The 1-based static-table index of `(name, value)` (`true`) or of `name` alone (`false`).
fn static_lookup(name: &[u8], value: &[u8]) -> Option<(usize, bool)> {
    let mut name_match = None;
    for (i, (n, v)) in static_table().iter().enumerate() {
        if n.as_slice() == name {
            if v.as_slice() == value {
                return Some((i + 1, true));
            }
            name_match.get_or_insert(i + 1);
        }
    }
    name_match.map(|i| (i, false))
}

pub(crate) fn malformed(msg: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 :authority adapter: {}", msg.into()),
    )
}
