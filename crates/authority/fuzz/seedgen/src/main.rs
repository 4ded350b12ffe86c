//! Writes crates/authority/fuzz/seeds/authority/*. Each seed is the `authority` target's input: a mode
//! byte, a chunk byte, then the client's byte stream (see fuzz_targets/authority.rs).

use std::path::Path;

use bytes::Bytes;
use loona_hpack::Encoder;
use tokio::io::AsyncReadExt;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Mode: no preface prepended, reads of 4096 bytes through the adapter (READ_SIZES[11]).
const MODE_BULK: u8 = 11 << 1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The client-to-server bytes of a real `h2` client making three gRPC-shaped unary calls.
async fn h2_client_bytes() -> Vec<u8> {
    let (client_io, mut server_io) = tokio::io::duplex(1 << 20);
    let capture = tokio::spawn(async move {
        let mut all = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match tokio::time::timeout(
                std::time::Duration::from_millis(300),
                server_io.read(&mut buf),
            )
            .await
            {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            }
        }
        all
    });
    let (mut client, conn) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // Kept alive until the capture ends: dropping them would make the client reset the streams.
    let mut calls = Vec::new();
    for (i, method) in ["Status", "Encrypt", "Decrypt"].iter().enumerate() {
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost/v2.KeyManagementService/{method}"))
            .header("content-type", "application/grpc")
            .header("user-agent", "grpc-go/1.65.0")
            .header("te", "trailers")
            .header("grpc-timeout", format!("{}u", 2_999_870 - i))
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        // A gRPC message: not compressed, 5 bytes of protobuf.
        send.send_data(Bytes::from_static(b"\x00\x00\x00\x00\x05\x0a\x03uid"), true)
            .unwrap();
        calls.push((response, send));
    }
    let bytes = capture.await.unwrap();
    drop(calls);
    bytes
}

/// A grpc-go-shaped stream: preface, SETTINGS, WINDOW_UPDATE, then one call per authority (HEADERS
/// without Huffman, with incremental indexing, then DATA), and a PING.
fn grpc_go_stream(authorities: &[&str], split: bool) -> Vec<u8> {
    let mut s = PREFACE.to_vec();
    s.extend(frame(0x4, 0, 0, &[0, 2, 0, 0, 0, 0, 0, 4, 0, 0x40, 0, 0]));
    s.extend(frame(0x8, 0, 0, &[0, 0x3f, 0, 1]));
    let mut encoder = Encoder::new();
    for (i, authority) in authorities.iter().enumerate() {
        let stream = 1 + 2 * u32::try_from(i).unwrap();
        let fields: [(&[u8], &[u8]); 8] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/v2.KeyManagementService/Encrypt"),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"user-agent", b"grpc-go/1.65.0"),
            (b"te", b"trailers"),
            (b"grpc-timeout", b"2999870u"),
        ];
        let block = encoder.encode(fields);
        if split {
            // PADDED + PRIORITY HEADERS with the first half, CONTINUATION with the rest.
            let (a, b) = block.split_at(block.len() / 2);
            let mut p = vec![3u8, 0, 0, 0, 0, 15];
            p.extend_from_slice(a);
            p.extend_from_slice(&[0, 0, 0]);
            s.extend(frame(0x1, 0x8 | 0x20, stream, &p));
            s.extend(frame(0x9, 0x4, stream, b));
        } else {
            s.extend(frame(0x1, 0x4, stream, &block));
        }
        s.extend(frame(0x0, 0x1, stream, b"\x00\x00\x00\x00\x05\x0a\x03abc"));
    }
    s.extend(frame(0x6, 0, 0, b"12345678"));
    s
}

fn write(dir: &Path, name: &str, mode: u8, chunk: u8, stream: &[u8]) {
    let mut seed = vec![mode, chunk];
    seed.extend_from_slice(stream);
    std::fs::write(dir.join(name), seed).unwrap();
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds/authority");
    std::fs::create_dir_all(&dir).unwrap();

    let h2 = h2_client_bytes().await;
    assert!(
        h2.starts_with(PREFACE),
        "captured bytes are not an HTTP/2 client stream"
    );
    write(&dir, "h2-client", MODE_BULK, 0, &h2);
    // The same without its preface, for the mode that prepends one; read and fed in small pieces.
    write(
        &dir,
        "h2-client-preface-added",
        MODE_BULK | 1,
        7,
        &h2[PREFACE.len()..],
    );

    let socket = grpc_go_stream(
        &[
            "/var/run/kmsplugin/socket.sock",
            "/var/run/kmsplugin/socket.sock",
        ],
        false,
    );
    write(&dir, "grpc-go-socket-path", MODE_BULK, 0, &socket);
    let encoded = grpc_go_stream(
        &["%2Fvar%2Frun%2Fkmsplugin%2Fsocket.sock", "localhost"],
        true,
    );
    write(&dir, "grpc-go-escaped-split", 3 << 1 | 0x80, 13, &encoded);
    println!("seeds written to {}", dir.display());
}
