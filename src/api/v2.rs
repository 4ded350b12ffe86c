//! KMS API v2: `Status`, `Encrypt`, `Decrypt`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{observed, open, seal};
use crate::metrics::Api;
use crate::plugin::Plugin;
use crate::proto::v2::key_management_service_server::KeyManagementService;
use crate::proto::v2::{
    DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, StatusRequest, StatusResponse,
};

/// kube-apiserver refuses a v2 ciphertext (its "encrypted DEK source") over 1 KiB.
pub const MAX_CIPHERTEXT: usize = 1024;

pub struct V2 {
    plugin: Arc<Plugin>,
}

impl V2 {
    pub fn new(plugin: Arc<Plugin>) -> Self {
        Self { plugin }
    }
}

#[tonic::async_trait]
impl KeyManagementService for V2 {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        observed(&self.plugin, Api::V2, "Status", async {
            let healthz = match self.plugin.health.status(self.plugin.envelope.datakeys()) {
                Ok(()) => "ok".to_string(),
                Err(reason) => reason,
            };
            Ok(Response::new(StatusResponse {
                version: self.plugin.api_settings().kms_v2_version.clone(),
                healthz,
                key_id: self.plugin.envelope.primary_kek_id(),
            }))
        })
        .await
    }

    async fn encrypt(
        &self,
        request: Request<EncryptRequest>,
    ) -> Result<Response<EncryptResponse>, Status> {
        observed(&self.plugin, Api::V2, "Encrypt", async {
            let sealed = seal(
                &self.plugin,
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
        observed(&self.plugin, Api::V2, "Decrypt", async {
            // The request's key_id is advisory: the header names the KEK, and that is authenticated.
            let plaintext = open(
                &self.plugin,
                request.metadata(),
                &request.get_ref().ciphertext,
            )
            .await?;
            Ok(Response::new(DecryptResponse { plaintext }))
        })
        .await
    }
}
