//! Client of a Confluent-compatible schema registry (its documented REST API): writer schemas
//! by id for Confluent-framed input, registration of the output schemas, compatibility checks.
//!
//! Blocking (ureq) and called from blocking threads: requests are rare (one per schema id per
//! process) and never on the per-message path. Answers are classified for the worker: a schema
//! the registry does not have is the message's fault ([`Lookup::NotFound`]); anything else (no
//! connection, a timeout, a 5xx, an answer we cannot read) is transient and retried.

use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig, TlsProvider};

use crate::config::SchemaRegistry;

/// The registry's answer for a schema id.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Found(String),
    NotFound,
}

/// A registry request that failed for a reason other than the answer itself: retry it.
#[derive(Debug, Error)]
#[error("schema registry {url}: {detail}")]
pub struct RegistryError {
    pub url: String,
    pub detail: String,
    /// The HTTP status, when the registry answered.
    pub status: Option<u16>,
}

impl RegistryError {
    /// A refusal that retrying will not change (authentication, permission, a schema the
    /// registry's compatibility rules reject, a malformed request): an operator must act.
    pub fn is_permanent(&self) -> bool {
        matches!(self.status, Some(400..=499)) && !matches!(self.status, Some(404 | 408 | 429))
    }
}

/// Content type of the registry's API.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// Confluent's error code for "schema not found".
const SCHEMA_NOT_FOUND: i64 = 40403;

pub struct Registry {
    base: String,
    agent: ureq::Agent,
    auth: Option<String>,
}

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
}

#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error_code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct CompatibilityAnswer {
    is_compatible: bool,
    #[serde(default)]
    messages: Vec<String>,
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Registry {
    /// A client for the configured registry, or None when no URL is set. Passwords and tokens
    /// may come from `TAILOR_REGISTRY_PASSWORD` / `TAILOR_REGISTRY_TOKEN`.
    pub fn from_config(c: &SchemaRegistry, timeout: Duration) -> anyhow::Result<Option<Registry>> {
        let base = c.url.trim().trim_end_matches('/').to_owned();
        if base.is_empty() {
            return Ok(None);
        }
        let roots = match &c.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("schema_registry.ca_file {}: {e}", path.display())
                })?;
                // Every certificate of a bundle (intermediate and root, or several roots).
                let mut certs = Vec::new();
                for item in parse_pem(&pem) {
                    match item {
                        Ok(PemItem::Certificate(c)) => certs.push(c),
                        Ok(_) => {}
                        Err(e) => anyhow::bail!("schema_registry.ca_file {}: {e}", path.display()),
                    }
                }
                if certs.is_empty() {
                    anyhow::bail!(
                        "schema_registry.ca_file {}: no PEM certificate in it",
                        path.display()
                    );
                }
                RootCerts::new_with_certs(&certs)
            }
            None => RootCerts::PlatformVerifier,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .tls_config(
                TlsConfig::builder()
                    .provider(TlsProvider::NativeTls)
                    .root_certs(roots)
                    .build(),
            )
            .build()
            .into();
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let auth = if let Some(token) = env("TAILOR_REGISTRY_TOKEN").or(c.bearer_token.clone()) {
            Some(format!("Bearer {token}"))
        } else {
            c.username.as_ref().map(|user| {
                let password = env("TAILOR_REGISTRY_PASSWORD")
                    .or(c.password.clone())
                    .unwrap_or_default();
                format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
            })
        };
        Ok(Some(Registry { base, agent, auth }))
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn err(&self, path: &str, detail: impl ToString) -> RegistryError {
        RegistryError {
            url: format!("{}{path}", self.base),
            detail: detail.to_string(),
            status: None,
        }
    }

    /// One request: (status, body).
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), RegistryError> {
        let url = format!("{}{path}", self.base);
        let result = match body {
            None => {
                let mut req = self.agent.get(&url).header("Accept", CONTENT_TYPE);
                if let Some(a) = &self.auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            Some(body) => {
                let mut req = self
                    .agent
                    .post(&url)
                    .header("Accept", CONTENT_TYPE)
                    .header("Content-Type", CONTENT_TYPE);
                if let Some(a) = &self.auth {
                    req = req.header("Authorization", a);
                }
                req.send(body)
            }
        };
        let mut resp = result.map_err(|e| self.err(path, format!("{method}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| self.err(path, format!("reading the answer: {e}")))?;
        Ok((status, text))
    }

    fn refused(&self, path: &str, status: u16, body: &str) -> RegistryError {
        let detail = serde_json::from_str::<ErrorAnswer>(body)
            .map(|e| format!("HTTP {status}, error {}: {}", e.error_code, e.message))
            .unwrap_or_else(|_| format!("HTTP {status}"));
        RegistryError {
            status: Some(status),
            ..self.err(path, detail)
        }
    }

    /// `GET /schemas/ids/{id}`: the writer schema of Confluent-framed messages with that id.
    pub fn schema_by_id(&self, id: u32) -> Result<Lookup, RegistryError> {
        let path = format!("/schemas/ids/{id}");
        let (status, body) = self.call("GET", &path, None)?;
        match status {
            200 => serde_json::from_str::<SchemaAnswer>(&body)
                .map(|a| Lookup::Found(a.schema))
                .map_err(|e| self.err(&path, format!("unexpected answer: {e}"))),
            // Only the registry's own "schema not found" blames the message: a 404 from a
            // wrong URL (a proxy, a path prefix) must not dead-letter every event.
            404 if serde_json::from_str::<ErrorAnswer>(&body)
                .is_ok_and(|e| e.error_code == SCHEMA_NOT_FOUND) =>
            {
                Ok(Lookup::NotFound)
            }
            _ => Err(self.refused(&path, status, &body)),
        }
    }

    /// `POST /subjects/{subject}/versions`: registers (or finds) a schema; its id.
    pub fn register(&self, subject: &str, schema_json: &str) -> Result<u32, RegistryError> {
        let path = format!("/subjects/{subject}/versions");
        let body = serde_json::json!({ "schema": schema_json }).to_string();
        let (status, answer) = self.call("POST", &path, Some(&body))?;
        if status != 200 {
            return Err(self.refused(&path, status, &answer));
        }
        serde_json::from_str::<IdAnswer>(&answer)
            .map(|a| a.id)
            .map_err(|e| self.err(&path, format!("unexpected answer: {e}")))
    }

    /// `POST /compatibility/subjects/{subject}/versions/latest`: whether the registry's rules
    /// accept `schema_json` as the subject's next version. None when the subject has no versions.
    pub fn compatible(
        &self,
        subject: &str,
        schema_json: &str,
    ) -> Result<Option<(bool, Vec<String>)>, RegistryError> {
        let path = format!("/compatibility/subjects/{subject}/versions/latest?verbose=true");
        let body = serde_json::json!({ "schema": schema_json }).to_string();
        let (status, answer) = self.call("POST", &path, Some(&body))?;
        match status {
            200 => serde_json::from_str::<CompatibilityAnswer>(&answer)
                .map(|a| Some((a.is_compatible, a.messages)))
                .map_err(|e| self.err(&path, format!("unexpected answer: {e}"))),
            // Subject or version not found: nothing to be compatible with yet. Any other 404
            // (a wrong URL or path prefix) is an error, not a healthy answer.
            404 if serde_json::from_str::<ErrorAnswer>(&answer)
                .is_ok_and(|e| matches!(e.error_code, 40401 | 40402)) =>
            {
                Ok(None)
            }
            _ => Err(self.refused(&path, status, &answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_rfc4648_base64() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"user:p@ss"), "dXNlcjpwQHNz");
    }
}
