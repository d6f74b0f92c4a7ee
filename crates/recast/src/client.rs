//! Talking to a running server: found through the data directory (or RECAST_SERVER and
//! RECAST_TOKEN), spoken to over its JSON API.

use anyhow::{Context as _, anyhow, bail};
use recast_api::v1;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn find(data_dir: &Path) -> anyhow::Result<Client> {
        Client::running(data_dir)?.ok_or_else(|| {
            anyhow!(
                "no recast server is running for data directory {}\n  hint: start one with `recast server` (or `recast up`), or set RECAST_SERVER and RECAST_TOKEN",
                data_dir.display()
            )
        })
    }

    /// The server of `data_dir` (or `RECAST_SERVER`), or `None` when none is running.
    pub fn running(data_dir: &Path) -> anyhow::Result<Option<Client>> {
        let base = match std::env::var("RECAST_SERVER")
            .ok()
            .filter(|s| !s.is_empty())
        {
            Some(s) if s.starts_with("http://") || s.starts_with("https://") => s,
            Some(s) => format!("http://{s}"),
            None => {
                let Ok(bytes) = std::fs::read(recast_server::info_path(data_dir)) else {
                    return Ok(None);
                };
                let Ok(info) = serde_json::from_slice::<recast_server::ServerInfo>(&bytes) else {
                    return Ok(None);
                };
                if !Path::new(&format!("/proc/{}", info.pid)).exists() {
                    return Ok(None);
                }
                format!("http://{}", info.addr)
            }
        };
        let token = match std::env::var("RECAST_TOKEN").ok().filter(|s| !s.is_empty()) {
            Some(t) => t,
            None => {
                let p = recast_server::token_path(data_dir);
                recast_server::read_token(&p)
                    .map_err(|e| anyhow!("{e}"))?
                    .ok_or_else(|| {
                        anyhow!(
                            "there is no API token {}\n  hint: set RECAST_TOKEN, or start the server (it creates the token)",
                            p.display()
                        )
                    })?
            }
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Ok(Some(Client { base, token, agent }))
    }

    fn check(
        &self,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let resp = resp.map_err(|e| {
            anyhow!(
                "the recast server at {} did not answer: {e}\n  hint: is it still running?",
                self.base
            )
        })?;
        let status = resp.status();
        let v: Value =
            serde_json::from_reader(resp.into_body().into_reader()).unwrap_or(Value::Null);
        if !status.is_success() {
            match serde_json::from_value::<v1::ErrorReply>(v) {
                Ok(e) => bail!("{}", e.error),
                Err(_) => bail!("the recast server answered {status}"),
            }
        }
        Ok(v)
    }

    /// A GET whose answer is read as `T` (one of the API's types).
    pub fn get_as<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        traced("GET", path);
        let v = self.get(path)?;
        typed(v, "GET", path)
    }

    /// A POST of `body` whose answer is read as `T` (one of the API's types).
    pub fn post_as<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_value(body).context("writing the request")?;
        traced("POST", path);
        let v = self.post(path, &body)?;
        typed(v, "POST", path)
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self
            .agent
            .get(&format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call();
        self.check(r)
    }

    /// A GET whose answer is read as it arrives, with no overall deadline (`logs --follow`
    /// lasts as long as the user wants); connecting and the answer's start are still bounded.
    pub fn get_stream(&self, path: &str) -> anyhow::Result<impl std::io::Read + use<>> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .build()
            .into();
        let resp = agent
            .get(&format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .map_err(|e| {
                anyhow!(
                    "the recast server at {} did not answer: {e}\n  hint: is it still running?",
                    self.base
                )
            })?;
        if !resp.status().is_success() {
            let status = resp.status();
            self.check(Ok(resp))?;
            bail!("the recast server answered {status}");
        }
        Ok(resp.into_body().into_reader())
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let r = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes());
        self.check(r)
    }
}

/// The server's answer as the API's type, or what does not fit (a server of another version).
fn typed<T: DeserializeOwned>(v: Value, method: &str, path: &str) -> anyhow::Result<T> {
    serde_json::from_value(v).map_err(|e| {
        anyhow!(
            "the recast server's answer to {method} {path} is not what this recast reads: {e}\n  hint: are the server and the CLI the same version?"
        )
    })
}

/// With `-v`, each API request on stderr (method and path: never a body, which may hold secrets).
fn traced(method: &str, path: &str) {
    if crate::term::verbosity() == crate::term::Verbosity::Verbose {
        eprintln!(
            "{} {method} {path}",
            crate::term::err("api:", crate::term::Paint::Dim)
        );
    }
}
