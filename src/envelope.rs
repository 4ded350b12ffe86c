//! Sealing and opening payloads (DESIGN §2): a payload is sealed with SM4-GCM under the current data key,
//! and the result carries, in its authenticated header, what it takes to find that key again.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::cipher::NONCE_LEN;
use crate::ciphertext;
use crate::datakeys::DataKeys;
use crate::error::Error;

/// A sealed payload and the KEK that protects its data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub kek_id: Arc<str>,
}

/// Seals and opens format-1 ciphertexts.
pub struct Envelope {
    datakeys: Arc<DataKeys>,
}

impl Envelope {
    pub fn new(datakeys: Arc<DataKeys>) -> Self {
        Self { datakeys }
    }

    pub fn datakeys(&self) -> &Arc<DataKeys> {
        &self.datakeys
    }

    /// The primary KEK id: what KMS v2 `Status.key_id` reports.
    pub fn primary_kek_id(&self) -> String {
        self.datakeys.state().keyring.primary().kek_id().to_string()
    }

    /// Seals `plaintext` under the current data key.
    pub async fn seal(&self, plaintext: &[u8]) -> Result<Sealed, Error> {
        if plaintext.is_empty() {
            return Err(Error::EmptyPlaintext);
        }
        let key = self.datakeys.current().await?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| Error::Rng(e.to_string()))?;
        let mut out = Vec::new();
        ciphertext::write_header(
            &mut out,
            key.cipher().id(),
            key.kek_id(),
            key.wrapped(),
            plaintext.len(),
        )?;
        let header_len = out.len();
        out.extend_from_slice(&nonce);
        // The AAD is the header; seal_append only reads `aad` and appends, so split the borrow.
        let (aad, _) = out.split_at(header_len);
        let aad = aad.to_vec();
        key.cipher()
            .seal_append(&nonce, &aad, plaintext, &mut out)
            .map_err(|_| Error::Authentication)?;
        Ok(Sealed {
            ciphertext: out,
            kek_id: key.kek_id().clone(),
        })
    }

    /// Opens a format-1 ciphertext. The KEK is found by the id in the header, never by what the caller
    /// claims it is.
    pub async fn open(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let parsed = ciphertext::parse(ciphertext)?;
        let plain = self
            .datakeys
            .open_with(parsed.cipher_id, parsed.kek_id, parsed.wrapped_dk, |c| {
                c.open(parsed.nonce, parsed.header, parsed.sealed)
            })
            .await?;
        Ok(Zeroizing::new(plain))
    }
}
