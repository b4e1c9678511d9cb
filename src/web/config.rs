//! `[web]`: the page on the board and its JSON API.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Shortest token accepted: guessing it must take longer than the device lives.
const MIN_TOKEN_CHARS: usize = 16;

/// `[web]`: where the page, the API and `/metrics` are served.
#[derive(Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// e.g. `127.0.0.1:8080`; unset = no page.
    pub listen: Option<SocketAddr>,
    /// Asked of every request (`Authorization: Bearer …` or the login cookie); required
    /// when `listen` is not a loopback address.
    pub token: Option<String>,
}

/// Never prints the token.
impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl WebConfig {
    pub fn validate(&self) -> Result<()> {
        if let Some(token) = &self.token {
            let chars = token.chars().count();
            if chars < MIN_TOKEN_CHARS || token.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(Error::invalid(
                    "web.token",
                    format!(
                        "must be at least {MIN_TOKEN_CHARS} characters without spaces \
                         (e.g. the output of `openssl rand -hex 16`)"
                    ),
                ));
            }
        }
        match self.listen {
            Some(addr) if !addr.ip().is_loopback() && self.token.is_none() => Err(Error::invalid(
                "web.token",
                format!(
                    "web.listen = \"{addr}\" is reachable from other machines: set web.token \
                     (anyone who can reach the page could otherwise run maps and read the \
                     camera), or listen on 127.0.0.1"
                ),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, token: Option<&str>) -> WebConfig {
        WebConfig {
            listen: Some(listen.parse().unwrap()),
            token: token.map(str::to_string),
        }
    }

    #[test]
    fn a_bind_beyond_loopback_needs_a_token() {
        assert!(config("127.0.0.1:8080", None).validate().is_ok());
        assert!(config("[::1]:8080", None).validate().is_ok());
        let refused = config("0.0.0.0:8080", None)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(refused.contains("web.token"), "{refused}");
        assert!(config("0.0.0.0:8080", Some("0123456789abcdef"))
            .validate()
            .is_ok());
    }

    #[test]
    fn a_short_token_is_refused_and_never_printed() {
        let short = config("127.0.0.1:8080", Some("secret"));
        let refused = short.validate().unwrap_err().to_string();
        assert!(
            refused.contains("web.token") && !refused.contains("secret"),
            "{refused}"
        );
        assert!(!format!("{short:?}").contains("secret"));
    }
}
