//! Value types shared by the sections, each read with its own check so that an invalid value is
//! reported at its place: addresses, counts, shares, statuses, methods, header names and values,
//! and what counts as a failure.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// What counts as a failure (retry_on, outlier failure_on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The TCP connection could not be made.
    ConnectError,
    /// A deadline passed.
    Timeout,
    /// The target answered this status.
    Status(u16),
}

/// A "host:port" address; the host may be a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(transparent)]
pub struct SocketAddress(pub String);

/// A whole number ≥ 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(transparent)]
pub struct Positive(#[schemars(range(min = 1))] pub u32);

/// A byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(transparent)]
pub struct Bytes(pub u64);

/// A share between 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, JsonSchema)]
#[schemars(transparent)]
pub struct Ratio(#[schemars(range(min = 0.0, max = 1.0))] pub f64);

/// A percentage between 0 and 100.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, JsonSchema)]
#[schemars(transparent)]
pub struct Percent(#[schemars(range(min = 0.0, max = 100.0))] pub f64);

/// An HTTP status code, 100–599.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(transparent)]
pub struct StatusCode(#[schemars(range(min = 100, max = 599))] pub u16);

/// An HTTP method.
#[derive(Debug, Clone, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(transparent)]
pub struct Method(#[schemars(with = "String")] pub http::Method);

/// A valid header name, kept as written (compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(transparent)]
pub struct HeaderNameString(pub String);

/// A valid header value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(transparent)]
pub struct HeaderValueString(pub String);

impl Positive {
    /// The number.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl HeaderNameString {
    /// The parsed name (lower case).
    pub fn to_header_name(&self) -> http::HeaderName {
        // Checked when read, so the fallback is never taken.
        http::HeaderName::from_bytes(self.0.as_bytes())
            .unwrap_or_else(|_| http::HeaderName::from_static("x-invalid"))
    }
}

impl fmt::Display for SocketAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl SocketAddress {
    /// Splits into host and port.
    pub fn host_port(&self) -> (&str, u16) {
        split_host_port(&self.0).unwrap_or(("", 0))
    }

    /// True when the host is a loopback address or "localhost".
    pub fn is_loopback(&self) -> bool {
        let (host, _) = self.host_port();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || bare
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }
}

/// `"host:port"` → (host, port); IPv6 in brackets.
pub fn split_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    if host.is_empty() || (host.contains(':') && !(host.starts_with('[') && host.ends_with(']'))) {
        return None;
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return None;
    }
    Some((host, port.parse().ok()?))
}

// ---- value types read with their own checks, so that an invalid value carries its span ----

impl<'de> Deserialize<'de> for SocketAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if split_host_port(&text).is_none() {
            return Err(de::Error::custom(format!(
                "`{text}` is not an address: write it as \"host:port\", e.g. \"127.0.0.1:8080\""
            )));
        }
        Ok(Self(text))
    }
}

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        if value < 1 || value > i64::from(u32::MAX) {
            return Err(de::Error::custom(format!(
                "must be a whole number from 1 to {}, not {value}",
                u32::MAX
            )));
        }
        Ok(Self(value as u32))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        if value < 0 {
            return Err(de::Error::custom(format!(
                "a byte count cannot be negative ({value})"
            )));
        }
        Ok(Self(value as u64))
    }
}

fn number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    struct NumberVisitor;
    impl Visitor<'_> for NumberVisitor {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number")
        }
        fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
            Ok(value)
        }
        fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
            Ok(value as f64)
        }
        fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
            Ok(value as f64)
        }
    }
    deserializer.deserialize_any(NumberVisitor)
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = number(deserializer)?;
        if !(0.0..=1.0).contains(&value) {
            return Err(de::Error::custom(format!(
                "must be between 0 and 1 (a share: 0.5 is 50 %), not {value}"
            )));
        }
        Ok(Self(value))
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = number(deserializer)?;
        if !(0.0..=100.0).contains(&value) {
            return Err(de::Error::custom(format!(
                "must be a percentage between 0 and 100, not {value}"
            )));
        }
        Ok(Self(value))
    }
}

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        if !(100..=599).contains(&value) {
            return Err(de::Error::custom(format!(
                "`{value}` is not an HTTP status (100–599)"
            )));
        }
        Ok(Self(value as u16))
    }
}

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let upper = text.to_ascii_uppercase();
        if upper != text || upper.is_empty() {
            return Err(de::Error::custom(format!(
                "`{text}` is not a method: write methods in capitals, e.g. \"GET\""
            )));
        }
        http::Method::from_bytes(upper.as_bytes())
            .map(Self)
            .map_err(|_| de::Error::custom(format!("`{text}` is not an HTTP method")))
    }
}

impl<'de> Deserialize<'de> for HeaderNameString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        http::HeaderName::from_bytes(text.as_bytes())
            .map_err(|_| de::Error::custom(format!("`{text}` is not a valid header name")))?;
        Ok(Self(text))
    }
}

impl<'de> Deserialize<'de> for HeaderValueString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        http::HeaderValue::from_str(&text)
            .map_err(|_| de::Error::custom(format!("`{text}` is not a valid header value")))?;
        Ok(Self(text))
    }
}

impl<'de> Deserialize<'de> for FailureKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FailureVisitor;
        impl Visitor<'_> for FailureVisitor {
            type Value = FailureKind;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"connect_error\", \"timeout\" or an HTTP status such as 503")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<FailureKind, E> {
                match value {
                    "connect_error" => Ok(FailureKind::ConnectError),
                    "timeout" => Ok(FailureKind::Timeout),
                    other => Err(E::custom(format!(
                        "`{other}` is not a failure kind: expected \"connect_error\", \"timeout\" or a status such as 503"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<FailureKind, E> {
                if (100..=599).contains(&value) {
                    Ok(FailureKind::Status(value as u16))
                } else {
                    Err(E::custom(format!(
                        "`{value}` is not an HTTP status (100–599)"
                    )))
                }
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<FailureKind, E> {
                self.visit_i64(value.min(i64::MAX as u64) as i64)
            }
        }
        deserializer.deserialize_any(FailureVisitor)
    }
}

impl JsonSchema for FailureKind {
    fn schema_name() -> String {
        "FailureKind".to_owned()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        serde_json::from_value(serde_json::json!({
            "oneOf": [
                { "type": "string", "enum": ["connect_error", "timeout"] },
                { "type": "integer", "minimum": 100, "maximum": 599 }
            ]
        }))
        .unwrap_or(schemars::schema::Schema::Bool(true))
    }
}
