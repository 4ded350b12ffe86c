//! KMS API v2: `Status`, `Encrypt`, `Decrypt`.

use tonic::{Request, Response, Status};

use super::{Backend, observed, open, seal};
use crate::metrics::Api;
use crate::proto::v2::key_management_service_server::KeyManagementService;
use crate::proto::v2::{
    DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, StatusRequest, StatusResponse,
};

/// kube-apiserver refuses a v2 ciphertext (its "encrypted DEK source") over 1 KiB.
pub(crate) const MAX_CIPHERTEXT: usize = 1024;

/// The KMS v2 service.
pub struct V2 {
    backend: Backend,
}

impl V2 {
    /// The service over `backend`.
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }
}

#[tonic::async_trait]
impl KeyManagementService for V2 {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        observed(&self.backend, Api::V2, "Status", async {
            let healthz = match self.backend.health.status(self.backend.envelope.datakeys()) {
                Ok(()) => "ok".to_string(),
                Err(reason) => reason,
            };
            Ok(Response::new(StatusResponse {
                version: self.backend.settings().kms_v2_version,
                healthz,
                key_id: self.backend.envelope.primary_kek_id(),
            }))
        })
        .await
    }

    async fn encrypt(
        &self,
        request: Request<EncryptRequest>,
    ) -> Result<Response<EncryptResponse>, Status> {
        observed(&self.backend, Api::V2, "Encrypt", async {
            let sealed = seal(
                &self.backend,
                request.metadata(),
                &request.get_ref().plaintext,
                MAX_CIPHERTEXT,
                "v2",
            )
            .await?;
            Ok(Response::new(EncryptResponse {
                ciphertext: sealed.ciphertext,
                // The KEK that actually wrapped this data key: equal to Status.key_id except while sealing
                // falls back to an older key during a provider outage, when it tells the truth.
                key_id: sealed.kek_id.to_string(),
                annotations: Default::default(),
            }))
        })
        .await
    }

    async fn decrypt(
        &self,
        request: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        observed(&self.backend, Api::V2, "Decrypt", async {
            // The request's key_id is advisory: the header names the KEK, and that is authenticated.
            let plaintext = open(
                &self.backend,
                request.metadata(),
                &request.get_ref().ciphertext,
                "v2",
            )
            .await?;
            Ok(Response::new(DecryptResponse { plaintext }))
        })
        .await
    }
}
