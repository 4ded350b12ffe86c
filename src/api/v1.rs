//! KMS API v1beta1: `Version`, `Encrypt`, `Decrypt`.

use tonic::{Request, Response, Status};

use super::{Backend, observed, open, seal};
use crate::metrics::Api;
use crate::proto::v1beta1::key_management_service_server::KeyManagementService;
use crate::proto::v1beta1::{
    DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, VersionRequest,
    VersionResponse,
};

/// The API version string v1 clients send and expect.
pub(crate) const API_VERSION: &str = "v1beta1";
/// kube-apiserver stores a v1 ciphertext behind a 2-byte length.
pub(crate) const MAX_CIPHERTEXT: usize = u16::MAX as usize;

/// The KMS v1beta1 service.
pub struct V1 {
    backend: Backend,
}

impl V1 {
    /// The service over `backend`.
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }
}

/// kube-apiserver sends `v1beta1`; an empty version (hand-written clients) is taken to mean the same.
fn check_version(v: &str) -> Result<(), Status> {
    if v.is_empty() || v == API_VERSION {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "unsupported KMS API version {v:?}; this service speaks {API_VERSION:?}"
        )))
    }
}

#[tonic::async_trait]
impl KeyManagementService for V1 {
    async fn version(
        &self,
        request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        observed(&self.backend, Api::V1, "Version", async {
            check_version(&request.get_ref().version)?;
            Ok(Response::new(VersionResponse {
                version: API_VERSION.into(),
                runtime_name: crate::RUNTIME_NAME.into(),
                runtime_version: crate::RUNTIME_VERSION.into(),
            }))
        })
        .await
    }

    async fn encrypt(
        &self,
        request: Request<EncryptRequest>,
    ) -> Result<Response<EncryptResponse>, Status> {
        observed(&self.backend, Api::V1, "Encrypt", async {
            check_version(&request.get_ref().version)?;
            let sealed = seal(
                &self.backend,
                request.metadata(),
                &request.get_ref().plain,
                MAX_CIPHERTEXT,
                API_VERSION,
            )
            .await?;
            Ok(Response::new(EncryptResponse {
                cipher: sealed.ciphertext,
            }))
        })
        .await
    }

    async fn decrypt(
        &self,
        request: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        observed(&self.backend, Api::V1, "Decrypt", async {
            check_version(&request.get_ref().version)?;
            let plain = open(
                &self.backend,
                request.metadata(),
                &request.get_ref().cipher,
                "v1",
            )
            .await?;
            Ok(Response::new(DecryptResponse { plain }))
        })
        .await
    }
}
