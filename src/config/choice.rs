//! Config settings that name one of a fixed set of choices, parsed once at load.
//!
//! Each is an enum with one variant per choice and an `Unknown` variant that keeps what
//! was written: the file still loads, so validation can report it beside every other
//! problem (`file: entry: problem`, all at once) instead of serde stopping at the first.
//! After validation no `Unknown` reaches a compiled config.

/// Declares a choice enum: `Name { Variant = "text", … }`.
macro_rules! choice {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value no choice names; validation refuses it.
            Unknown(String),
        }

        impl $name {
            /// Every valid value, as written in the config.
            pub const CHOICES: &'static [&'static str] = &[$($text),+];

            /// The value as written in the config.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Unknown(s) => s,
                }
            }

            /// Parses a value as written.
            pub fn parse(s: &str) -> Self {
                match s {
                    $($text => Self::$variant,)+
                    other => Self::Unknown(other.to_owned()),
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok(Self::parse(&String::deserialize(d)?))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

choice! {
    /// What a target issues (`[[targets]] kind`).
    TargetKind {
        /// A JWT Ferry signs itself.
        Jwt = "jwt",
        /// AWS STS credentials.
        Aws = "aws",
        /// A Google access token (or ID token).
        Gcp = "gcp",
        /// A Microsoft Entra access token.
        Azure = "azure",
    }
}

choice! {
    /// Where shared state lives (`[store] backend`).
    StoreBackend {
        /// This process's memory (one replica).
        Memory = "memory",
        /// Redis, standalone or Cluster (replicas share it).
        Redis = "redis",
    }
}

choice! {
    /// What an exchange does when the credential cache cannot answer
    /// (`[store] on_cache_error`).
    OnCacheError {
        /// Answer 503.
        Unavailable = "unavailable",
        /// Treat it as a miss and mint (never trusting a cache that is down).
        Bypass = "bypass",
    }
}

choice! {
    /// Whether a TLS client must present a certificate (`[server.tls] client_auth`).
    ClientAuth {
        /// Verified when presented; a connection without one is served.
        Optional = "optional",
        /// A connection without a certificate that chains to the CA fails its handshake.
        Required = "required",
    }
}

choice! {
    /// Whether what a target mints is bound to the client's key (`[[targets]] binding`).
    Binding {
        /// Bound when the request carries a DPoP proof or a client certificate.
        Optional = "optional",
        /// A DPoP proof is required; the token carries `cnf.jkt`.
        Dpop = "dpop",
        /// A client certificate is required; the token carries `cnf."x5t#S256"`.
        Mtls = "mtls",
        /// Never bound (a bearer token).
        None = "none",
    }
}

choice! {
    /// Where a request's client address comes from (`[server] client_address`).
    ClientAddress {
        /// The TCP peer.
        Peer = "peer",
        /// The right-most untrusted hop of `X-Forwarded-For`, from a trusted proxy.
        XForwardedFor = "x-forwarded-for",
        /// The right-most untrusted `for=` of RFC 7239 `Forwarded`, from a trusted proxy.
        Forwarded = "forwarded",
        /// A PROXY protocol (v1 or v2) header, from a trusted load balancer.
        ProxyProtocol = "proxy-protocol",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_choice_keeps_what_was_written() {
        assert_eq!(TargetKind::parse("aws"), TargetKind::Aws);
        assert_eq!(TargetKind::parse("AWS"), TargetKind::Unknown("AWS".into()));
        assert_eq!(TargetKind::parse("AWS").as_str(), "AWS");
        assert_eq!(StoreBackend::CHOICES, ["memory", "redis"]);
        let parsed: OnCacheError = serde_json::from_str("\"bypass\"").unwrap();
        assert_eq!(parsed, OnCacheError::Bypass);
        assert_eq!(parsed.to_string(), "bypass");
    }
}
