//! A gRPC client over a unix socket, as the tests and benchmarks dial the plugin. tonic sets `:authority`
//! from the endpoint URI (`localhost`), a form h2 accepts; the socket-path forms kube-apiserver sends are
//! exercised by the plugin's own tests.

use std::path::Path;

use tonic::transport::{Channel, Endpoint, Uri};

/// Connects to the unix socket at `socket`.
///
/// # Panics
/// If the socket cannot be connected to: this is test code, and a test that cannot reach the plugin has
/// failed.
pub async fn uds_channel(socket: &Path) -> Channel {
    let path = socket.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()))
}
