//! The model references as the coordinator loaded them (`GET /reference/image`,
//! `GET /reference/text`; beyond the public horde, issue 30). A worker downloads its models by
//! the coordinator's copy, which names the download URLs and checksums. The text is returned as
//! sent, unparsed: its reader (the worker's model list) parses what it needs, and a checksum
//! compared with the file on disk must be the coordinator's own.

use crate::{error_from, Client, Result};
use reqwest::Method;

impl Client {
    /// The image model reference the coordinator loaded, as its JSON text.
    pub async fn image_model_reference(&self) -> Result<String> {
        self.reference_text("/reference/image").await
    }

    /// The text model reference the coordinator loaded, as its JSON text.
    pub async fn text_model_reference(&self) -> Result<String> {
        self.reference_text("/reference/text").await
    }

    /// The body of `GET path` as text; an error answer keeps what the server said.
    async fn reference_text(&self, path: &str) -> Result<String> {
        let response = self.request(Method::GET, path).send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            return Err(error_from(status, &bytes));
        }
        String::from_utf8(bytes.to_vec()).map_err(|e| crate::ClientError::Unexpected {
            status,
            detail: format!("the reference is not UTF-8: {e}"),
        })
    }
}
