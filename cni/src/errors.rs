//! The error a CNI runtime sees: the spec's `{cniVersion, code, msg, details}`
//! object with its well-known codes (0–99) and skiff's own (100+).
//!
//! Every module keeps its own `thiserror` enum; this module only maps them to
//! codes. Messages are written for the operator reading a pod event: they say
//! what was being done, to what, and what to check.

use serde_json::{json, Value};

/// The CNI error codes skiff-cni returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// 1: the config's `cniVersion` is not one this plugin speaks.
    IncompatibleVersion = 1,
    /// 2: the network config has a field this plugin does not know.
    UnsupportedField = 2,
    /// 3: the container (its netns or attachment) is unknown or gone.
    UnknownContainer = 3,
    /// 4: a required `CNI_*` environment variable is missing or invalid.
    InvalidEnvironment = 4,
    /// 5: reading or writing a file (stdin, IPAM store) failed.
    Io = 5,
    /// 6: stdin or a plugin result is not valid JSON.
    Decode = 6,
    /// 7: the network config is well-formed JSON but says something invalid.
    InvalidConfig = 7,
    /// 11: a transient condition (lock held too long); retry later.
    TryAgainLater = 11,
    /// 50: STATUS: the plugin cannot accept ADDs right now.
    NotAvailable = 50,
    /// 51: STATUS: not available and existing pods may lack connectivity.
    NotAvailableLimitedConnectivity = 51,
    /// 100: every address of a range set is allocated.
    RangeExhausted = 100,
    /// 101: the interface to create already exists.
    InterfaceExists = 101,
    /// 102: a netlink request failed.
    Netlink = 102,
    /// 103: iptables failed while managing the masquerade rule.
    Iptables = 103,
    /// 104: the delegated IPAM plugin failed.
    Delegate = 104,
    /// 105: CHECK found the attachment differs from what ADD set up.
    CheckFailed = 105,
    /// 106: a sysctl could not be read or written.
    Sysctl = 106,
    /// 107: a requested static address is in use or is a gateway.
    AddressUnavailable = 107,
}

impl Code {
    /// The well-known spec code `n` (0–99), if skiff has it; another plugin's
    /// error with such a code is passed on with the same code.
    pub fn from_spec(n: i64) -> Option<Code> {
        Some(match n {
            1 => Code::IncompatibleVersion,
            2 => Code::UnsupportedField,
            3 => Code::UnknownContainer,
            4 => Code::InvalidEnvironment,
            5 => Code::Io,
            6 => Code::Decode,
            7 => Code::InvalidConfig,
            11 => Code::TryAgainLater,
            50 => Code::NotAvailable,
            51 => Code::NotAvailableLimitedConnectivity,
            _ => return None,
        })
    }
}

/// A CNI error: code, short message and optional details.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    /// The numeric code (see [`Code`]).
    pub code: Code,
    /// One line saying what failed and what to check.
    pub msg: String,
    /// Longer context, such as the underlying error or the supported versions.
    pub details: Option<String>,
}

impl CniError {
    /// An error with `code` and `msg` and no details.
    pub fn new(code: Code, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = Some(details.into());
        self
    }

    /// The spec's error object for a runtime that asked for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({
            "cniVersion": cni_version,
            "code": self.code as u32,
            "msg": self.msg,
        });
        if let Some(d) = &self.details {
            v["details"] = Value::String(d.clone());
        }
        v
    }
}

/// Builds a [`CniError`] from a module error, keeping its message as `msg`.
pub(crate) fn from_err(code: Code, e: &dyn std::error::Error) -> CniError {
    let mut details = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        details.push(s.to_string());
        source = s.source();
    }
    let err = CniError::new(code, e.to_string());
    if details.is_empty() {
        err
    } else {
        err.with_details(details.join(": "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_spec_fields() {
        let e = CniError::new(Code::InvalidConfig, "bad").with_details("why");
        let v = e.to_json("1.1.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "bad");
        assert_eq!(v["details"], "why");
        assert_eq!(v["cniVersion"], "1.1.0");
        let v = CniError::new(Code::RangeExhausted, "full").to_json("1.0.0");
        assert_eq!(Code::from_spec(11), Some(Code::TryAgainLater));
        assert_eq!(
            Code::from_spec(51),
            Some(Code::NotAvailableLimitedConnectivity)
        );
        assert_eq!(Code::from_spec(999), None);
        assert_eq!(Code::from_spec(104), None);
        assert!(v.get("details").is_none());
    }
}
