//! The Docker volume plugin protocol's messages, exactly as dockerd encodes and decodes them.
//!
//! Field names are Go's (`Name`, `Opts`, `Err`...). Requests reject unknown shapes early so that
//! handlers only ever see typed values; replies skip empty optional fields because dockerd
//! decodes `CreatedAt` as a Go time (an empty string would break it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::driver::{Shown, VolumeStatus};

/// `/VolumeDriver.Create`: `Opts` may be missing or `null`.
#[derive(Debug, Deserialize)]
pub struct CreateRequest {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Opts", default)]
    pub opts: Option<BTreeMap<String, String>>,
}

/// Requests that carry only a volume name: Remove, Path, Get.
#[derive(Debug, Deserialize)]
pub struct NameRequest {
    #[serde(rename = "Name")]
    pub name: String,
}

/// Mount and Unmount: `ID` is one mount point of one container, reused by `docker cp`.
#[derive(Debug, Deserialize)]
pub struct MountRequest {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "ID")]
    pub id: String,
}

/// A reply that is only an error or success.
#[derive(Debug, Default, Serialize)]
pub struct ErrReply {
    #[serde(rename = "Err")]
    pub err: String,
}

/// Mount and Path replies.
#[derive(Debug, Default, Serialize)]
pub struct MountpointReply {
    #[serde(rename = "Mountpoint")]
    pub mountpoint: String,
    #[serde(rename = "Err")]
    pub err: String,
}

impl MountpointReply {
    pub fn at(mountpoint: String) -> Self {
        MountpointReply {
            mountpoint,
            err: String::new(),
        }
    }
}

/// What the call log names of a request: its volume and, for Mount and Unmount, the ID.
pub trait Subject {
    fn volume(&self) -> &str;
    fn id(&self) -> Option<&str> {
        None
    }
}

impl Subject for CreateRequest {
    fn volume(&self) -> &str {
        &self.name
    }
}

impl Subject for NameRequest {
    fn volume(&self) -> &str {
        &self.name
    }
}

impl Subject for MountRequest {
    fn volume(&self) -> &str {
        &self.name
    }
    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }
}

/// One volume as Get and List describe it to dockerd.
#[derive(Debug, Serialize)]
pub struct Volume {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Mountpoint", skip_serializing_if = "String::is_empty")]
    pub mountpoint: String,
    #[serde(rename = "CreatedAt", skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(rename = "Status", skip_serializing_if = "Option::is_none")]
    pub status: Option<Map<String, Value>>,
}

/// A volume's `Status` as `docker volume inspect` shows it: the keys operators and the tests
/// read (`health`, `holders`, `problem`...). Options a volume did not set (`prefix`) and
/// messages it has not got are left out.
pub fn status_json(s: &VolumeStatus) -> Map<String, Value> {
    let mut m = Map::new();
    match &s.settings {
        Shown::Parsed(o) => {
            m.insert("backend".into(), json!(o.backend));
            m.insert("bucket".into(), json!(o.bucket));
            if let Some(p) = &o.prefix {
                m.insert("prefix".into(), json!(p));
            }
            m.insert("ro".into(), json!(o.ro));
            m.insert("uid".into(), json!(o.uid));
            m.insert("gid".into(), json!(o.gid));
            m.insert("umask".into(), json!(format!("{:03o}", o.umask)));
        }
        Shown::Refused(raw) => {
            for key in ["backend", "bucket", "prefix"] {
                if let Some(v) = raw.get(key) {
                    m.insert(key.into(), json!(v));
                }
            }
        }
    }
    m.insert("mounted".into(), json!(s.mounted));
    m.insert("holders".into(), json!(s.holders));
    m.insert("health".into(), json!(s.health.as_str()));
    m.insert(
        "since".into(),
        json!(humantime::format_rfc3339_seconds(s.since).to_string()),
    );
    if let Some(e) = &s.last_error {
        m.insert("last-error".into(), json!(e.to_string()));
    }
    if let Some(p) = &s.problem {
        m.insert("problem".into(), json!(p.to_string()));
    }
    m
}

/// `/VolumeDriver.Get` reply.
#[derive(Debug, Serialize)]
pub struct GetReply {
    #[serde(rename = "Volume")]
    pub volume: Volume,
    #[serde(rename = "Err")]
    pub err: String,
}

/// `/VolumeDriver.List` reply.
#[derive(Debug, Serialize)]
pub struct ListReply {
    #[serde(rename = "Volumes")]
    pub volumes: Vec<Volume>,
    #[serde(rename = "Err")]
    pub err: String,
}

/// `/VolumeDriver.Capabilities` reply.
#[derive(Debug, Serialize)]
pub struct CapabilitiesReply {
    #[serde(rename = "Capabilities")]
    pub capabilities: Capabilities,
}

/// `Scope` is `local`: each host mounts for itself, even when the data is shared.
#[derive(Debug, Serialize)]
pub struct Capabilities {
    #[serde(rename = "Scope")]
    pub scope: &'static str,
}

/// `/Plugin.Activate` reply.
#[derive(Debug, Serialize)]
pub struct ActivateReply {
    #[serde(rename = "Implements")]
    pub implements: Vec<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_accepts_missing_and_null_opts() {
        let r: CreateRequest = serde_json::from_str(r#"{"Name":"v"}"#).unwrap();
        assert!(r.opts.is_none());
        let r: CreateRequest = serde_json::from_str(r#"{"Name":"v","Opts":null}"#).unwrap();
        assert!(r.opts.is_none());
        let r: CreateRequest =
            serde_json::from_str(r#"{"Name":"v","Opts":{"ro":"true"}}"#).unwrap();
        assert_eq!(r.opts.unwrap()["ro"], "true");
    }

    #[test]
    fn wrong_types_and_missing_fields_are_errors() {
        assert!(serde_json::from_str::<MountRequest>(r#"{"Name":"v"}"#).is_err());
        assert!(serde_json::from_str::<NameRequest>(r#"{"Name":7}"#).is_err());
        assert!(serde_json::from_str::<CreateRequest>(r#"{"Name":"v","Opts":{"a":1}}"#).is_err());
    }

    #[test]
    fn empty_fields_are_left_out_of_volumes() {
        let v = Volume {
            name: "v".into(),
            mountpoint: String::new(),
            created_at: None,
            status: None,
        };
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"{"Name":"v"}"#);
    }
}

#[cfg(test)]
mod properties {
    //! Whatever bytes arrive, decoding a request is an error or a value, never a panic.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn decoding_arbitrary_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = serde_json::from_slice::<CreateRequest>(&body);
            let _ = serde_json::from_slice::<MountRequest>(&body);
            let _ = serde_json::from_slice::<NameRequest>(&body);
        }

        #[test]
        fn decoding_json_shaped_input_never_panics(
            name in any::<String>(),
            id in prop_oneof![any::<String>().prop_map(serde_json::Value::from), any::<i64>().prop_map(serde_json::Value::from), Just(serde_json::Value::Null)],
            opts in proptest::collection::btree_map(any::<String>(), any::<String>(), 0..4),
        ) {
            let body = serde_json::json!({"Name": name, "ID": id, "Opts": opts}).to_string();
            let c: CreateRequest = serde_json::from_str(&body).unwrap();
            prop_assert_eq!(c.name, name);
            let _ = serde_json::from_str::<MountRequest>(&body);
        }
    }

    #[test]
    fn deeply_nested_json_is_refused_without_overflow() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(serde_json::from_str::<CreateRequest>(&deep).is_err());
        let body = format!("{{\"Name\":\"v\",\"Opts\":{}}}", "{\"a\":".repeat(50_000));
        assert!(serde_json::from_str::<CreateRequest>(&body).is_err());
    }
}
