//! An HTTP/2 connection adapter that makes kube-apiserver's `:authority` acceptable to tonic.
//!
//! kube-apiserver's grpc-go KMS client sends the unix socket path as `:authority`
//! (`/var/run/kms.sock`, or `%2Fvar%2Frun%2Fkms.sock` from grpc-go ≥ 1.57; the plugin's DESIGN §9).
//! The `h2` crate under tonic checks `:authority` against URI authority syntax and resets every such
//! stream as malformed (hyperium/h2#487). [`normalize`] wraps an accepted connection so that, on the way in,
//! every client header block whose `:authority` would be refused carries `localhost` instead:
//!
//! - the client preface and every frame other than HEADERS/CONTINUATION pass through byte for byte,
//!   without a copy where the bytes already sit in the reader's buffer (DATA, SETTINGS, PING, ...);
//! - each header block (HEADERS + CONTINUATION, PADDED and PRIORITY understood) is HPACK-decoded
//!   with the client's dynamic table (`loona-hpack`), `:authority` is replaced where [`needs_rewrite`]
//!   says so, and the block is re-encoded without dynamic-table indexing (static-table references and
//!   literals without indexing), so the server's HPACK table stays empty and always consistent; it is
//!   re-framed in frames of at most 16384 bytes (the minimum any server accepts), dropping padding and
//!   keeping END_STREAM and PRIORITY;
//! - server-to-client bytes pass through untouched;
//! - malformed input (bad preface, CONTINUATION out of sequence, bad padding, an HPACK error, a header
//!   block over 16 KiB (received or re-encoded), a client PUSH_PROMISE, a connection cut inside a frame) ends the connection
//!   with an `InvalidData`/`UnexpectedEof` error from `poll_read`; the parser never panics.
//!
//! One loss: a field the client sent as "never indexed" (RFC 7541 §6.2.3) is forwarded as a literal
//! without indexing, so the server does not see its sensitivity hint (tonic makes no use of it).
//!
//! Cost: a few µs of CPU per request, nearly all of it Huffman decoding (see `unhuffman.rs`, which
//! works around the HPACK crate's slow per-string Huffman table); `cargo bench -p gm-kms-authority`
//! measures it (`benches/adapter.rs`). The client's dynamic table is capped at 64 KiB (servers here
//! advertise the default 4 KiB).
//!
//! The adapter exists only for the `h2` check above; see the crate's README.md for the upstream change
//! that would make it removable.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod rewrite;
#[cfg(test)]
mod tests;
mod unhuffman;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use rewrite::{Rewriter, Step};

/// How much is read at a time while a frame that has to be buffered (a header block) is incomplete.
const STASH_READ: usize = 16 * 1024;

/// True when `authority` is not a valid URI authority, i.e. when `h2` would reset a request carrying
/// it as `:authority` (it applies this same `http::uri::Authority` parse): a socket path such as
/// `/var/run/kms.sock`, its percent-encoded form `%2Fvar%2Frun%2Fkms.sock`, an empty value. Values
/// `h2` accepts (`localhost`, `@name`, `host:port`) are left alone by the adapter.
pub fn needs_rewrite(authority: &[u8]) -> bool {
    http::uri::Authority::try_from(authority).is_err()
}

/// Wraps an accepted connection so that tonic sees a valid :authority.
///
/// The result reads the client's HTTP/2 byte stream with every `:authority` that `h2` would refuse
/// replaced by `localhost` (see the [module docs](self)), and writes through to `io` unchanged. Serve
/// it like the connection itself, e.g. with tonic's `serve_with_incoming` over a stream of
/// `normalize(unix_stream)`; it reports the wrapped connection's [`Connected::connect_info`].
pub fn normalize<IO>(io: IO) -> Normalized<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    Normalized {
        io,
        rewriter: Rewriter::new(),
        stash: Vec::new(),
        stash_pos: 0,
        scratch: None,
    }
}

/// A connection whose client-to-server HTTP/2 header blocks carry a valid `:authority`; made by
/// [`normalize`].
pub struct Normalized<IO> {
    io: IO,
    rewriter: Rewriter,
    /// Client bytes read but not yet forwarded (an incomplete frame header or header block, or what
    /// followed a header block in the same read), from `stash_pos` on.
    stash: Vec<u8>,
    stash_pos: usize,
    /// Where [`Self::fill_stash`] reads; allocated on first use.
    scratch: Option<Box<[u8]>>,
}

impl<IO> Normalized<IO> {
    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// How many `:authority` values this connection has had rewritten so far.
    pub fn rewritten(&self) -> u64 {
        self.rewriter.rewritten()
    }

    fn stash_is_empty(&self) -> bool {
        self.stash_pos >= self.stash.len()
    }

    /// Moves staged (rewritten) frames into `buf`, as far as it has room.
    fn drain_staged(&mut self, buf: &mut ReadBuf<'_>) {
        let staged = self.rewriter.staged();
        let n = staged.len().min(buf.remaining());
        if n > 0 {
            buf.put_slice(staged.get(..n).unwrap_or_default());
            self.rewriter.consume_staged(n);
        }
    }

    /// Forwards what can be forwarded from the stash into `buf`. Returns true when the stash holds an
    /// incomplete frame that needs more bytes from the connection.
    fn drain_stash(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<bool> {
        let mut need_more = false;
        while self.rewriter.staged().is_empty() && !self.stash_is_empty() && buf.remaining() > 0 {
            let input = self.stash.get(self.stash_pos..).unwrap_or_default();
            match self.rewriter.step(input, buf.remaining())? {
                Step::Pass(0) => break,
                Step::Pass(n) => {
                    buf.put_slice(input.get(..n).unwrap_or_default());
                    self.stash_pos = self.stash_pos.saturating_add(n);
                }
                Step::Took(n) => {
                    self.stash_pos = self.stash_pos.saturating_add(n);
                    self.drain_staged(buf);
                }
                Step::More => {
                    need_more = true;
                    break;
                }
            }
        }
        if self.stash_is_empty() {
            self.stash.clear();
            self.stash_pos = 0;
        }
        Ok(need_more)
    }
}

impl<IO: AsyncRead + Unpin> Normalized<IO> {
    /// Reads more client bytes onto the end of the stash. Ready(Ok(false)) at end of stream.
    fn fill_stash(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.stash_pos > 0 {
            self.stash.drain(..self.stash_pos);
            self.stash_pos = 0;
        }
        let scratch = self
            .scratch
            .get_or_insert_with(|| vec![0; STASH_READ].into_boxed_slice());
        let mut read = ReadBuf::new(scratch);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        let got = read.filled();
        self.stash.extend_from_slice(got);
        Poll::Ready(Ok(!got.is_empty()))
    }

    /// Reads client bytes straight into `buf` and scans them there: whatever passes through stays
    /// in place; from the first header frame (or incomplete frame header) on, the bytes move to the
    /// stash. Ready(Ok(false)) at end of stream.
    fn read_in_place(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<bool>> {
        let start = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        let end = buf.filled().len();
        if end == start {
            return Poll::Ready(Ok(false));
        }
        let mut pos = start;
        while pos < end {
            let input = buf.filled().get(pos..end).unwrap_or_default();
            match self.rewriter.step(input, usize::MAX)? {
                Step::Pass(0) => break,
                Step::Pass(n) => pos = pos.saturating_add(n),
                Step::Took(n) => {
                    self.stash
                        .extend_from_slice(input.get(n..).unwrap_or_default());
                    buf.set_filled(pos);
                    break;
                }
                Step::More => {
                    self.stash.extend_from_slice(input);
                    buf.set_filled(pos);
                    break;
                }
            }
        }
        Poll::Ready(Ok(true))
    }

    fn poll_read_inner(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.rewriter.is_failed() {
            return Poll::Ready(Err(rewrite::malformed("connection already failed")));
        }
        let entry = buf.filled().len();
        loop {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            self.drain_staged(buf);
            // Bytes left in the stash must go out before anything read later.
            let need_more = self.drain_stash(buf)? || !self.stash_is_empty();
            if buf.filled().len() > entry || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let got_bytes = if need_more {
                ready!(self.fill_stash(cx))?
            } else {
                ready!(self.read_in_place(cx, buf))?
            };
            if !got_bytes {
                return Poll::Ready(if self.stash_is_empty() && self.rewriter.at_boundary() {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "HTTP/2 :authority adapter: connection closed inside a frame",
                    ))
                });
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Normalized<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_inner(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Normalized<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Normalized<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
