//! A service URL (`amqp://user:password@host/vhost`, `redis://:password@host/5`) that keeps its
//! secret out of every message: the broker and the state adapters connect with the whole URL
//! and show only its redacted form.
//!
//! Invariant: nothing built from a [`SecretUrl`] for display (its `Display`, `Debug`, or text
//! passed through [`SecretUrl::scrub`]) contains the URL's password, its query or its fragment.

use std::fmt;

/// A connection URL whose password never reaches a log line or an error.
#[derive(Clone)]
pub(crate) struct SecretUrl {
    raw: String,
    shown: String,
    password: Option<String>,
}

impl SecretUrl {
    /// Wraps a URL; the password is whatever follows the first `:` of the userinfo.
    pub(crate) fn new(raw: &str) -> Self {
        let (scheme, rest) = raw.split_once("://").unwrap_or(("", raw));
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let path = &tail[..tail.find(['?', '#']).unwrap_or(tail.len())];
        let (user, password, host) = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password), host),
                None => (userinfo, None, host),
            },
            None => ("", None, authority),
        };
        let userinfo = match (user, password) {
            (user, Some(_)) => format!("{user}:***@"),
            ("", None) => String::new(),
            (user, None) => format!("{user}@"),
        };
        let scheme = if scheme.is_empty() {
            String::new()
        } else {
            format!("{scheme}://")
        };
        Self {
            raw: raw.to_owned(),
            shown: format!("{scheme}{userinfo}{host}{path}"),
            password: password.filter(|p| !p.is_empty()).map(str::to_owned),
        }
    }

    /// The whole URL, for connecting only.
    pub(crate) fn raw(&self) -> &str {
        &self.raw
    }

    /// Text from a client library (an error, a reason) with the URL and the password masked.
    pub(crate) fn scrub(&self, text: impl fmt::Display) -> String {
        let text = text.to_string().replace(&self.raw, &self.shown);
        match &self.password {
            Some(password) => text.replace(password.as_str(), "***"),
            None => text,
        }
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::SecretUrl;

    #[test]
    fn password_query_and_fragment_are_never_shown() {
        let url = SecretUrl::new("amqp://cai:hunter2@rabbit:5672/%2f?heartbeat=5#x");
        assert_eq!(url.to_string(), "amqp://cai:***@rabbit:5672/%2f");
        assert_eq!(
            format!("{url:?}"),
            "SecretUrl(amqp://cai:***@rabbit:5672/%2f)"
        );
        assert_eq!(
            url.scrub("Invalid URL: 'amqp://cai:hunter2@rabbit:5672/%2f?heartbeat=5#x'"),
            "Invalid URL: 'amqp://cai:***@rabbit:5672/%2f'"
        );
        assert_eq!(url.scrub("auth hunter2 refused"), "auth *** refused");
        assert_eq!(
            url.raw(),
            "amqp://cai:hunter2@rabbit:5672/%2f?heartbeat=5#x"
        );
    }

    #[test]
    fn urls_without_password_are_shown_as_they_are() {
        assert_eq!(
            SecretUrl::new("redis://127.0.0.1:6379/5").to_string(),
            "redis://127.0.0.1:6379/5"
        );
        assert_eq!(
            SecretUrl::new("redis://:pw@127.0.0.1/5").to_string(),
            "redis://:***@127.0.0.1/5"
        );
        assert_eq!(
            SecretUrl::new("amqp://guest@h").to_string(),
            "amqp://guest@h"
        );
        assert_eq!(SecretUrl::new("amqp://guest@h").scrub("guest"), "guest");
    }
}
