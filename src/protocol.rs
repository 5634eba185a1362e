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

    /// The bodies as the engines write them: Go's `encoding/json` sends a Create without `-o`
    /// as `"Opts":null` (a nil map), Docker's IDs are 64 hex digits, Podman's is one constant;
    /// a field a newer engine adds must not make a request fail.
    #[test]
    fn requests_decode_as_dockerd_and_podman_write_them() {
        let c: CreateRequest = serde_json::from_str(r#"{"Name":"v","Opts":null}"#).unwrap();
        assert_eq!((c.volume(), c.id(), &c.opts), ("v", None, &None));
        let c: CreateRequest = serde_json::from_str(r#"{"Name":"v"}"#).unwrap();
        assert!(c.opts.is_none());
        let c: CreateRequest =
            serde_json::from_str(r#"{"Name":"v","Opts":{"bucket":"b","ro":"true"}}"#).unwrap();
        let opts = c.opts.unwrap();
        assert_eq!(
            (opts["bucket"].as_str(), opts["ro"].as_str()),
            ("b", "true")
        );

        let docker_id = "8f0c5d0c5f2f4a8c9a3e3b1d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b";
        let podman_id = "2f73349cfc4630255319c6c8dfc1b46a8996ace9d14d8e07563b165915918ec2";
        for id in [docker_id, podman_id] {
            let m: MountRequest =
                serde_json::from_str(&format!(r#"{{"Name":"v","ID":"{id}"}}"#)).unwrap();
            assert_eq!((m.volume(), m.id()), ("v", Some(id)));
        }
        let n: NameRequest = serde_json::from_str(r#"{"Name":"v"}"#).unwrap();
        assert_eq!((n.volume(), n.id()), ("v", None));

        // Unknown fields are ignored, not refused.
        let m: MountRequest =
            serde_json::from_str(r#"{"Name":"v","ID":"x","Future":{"a":[1]}}"#).unwrap();
        assert_eq!((m.volume(), m.id()), ("v", Some("x")));
        let c: CreateRequest =
            serde_json::from_str(r#"{"Name":"v","Opts":null,"Labels":{"k":"l"}}"#).unwrap();
        assert_eq!(c.volume(), "v");
    }

    fn json<T: Serialize>(reply: &T) -> String {
        serde_json::to_string(reply).unwrap()
    }

    /// Every reply, byte for byte as dockerd decodes it: Go's field names, `Err` always present
    /// (empty on success), `Scope` `local`.
    #[test]
    fn replies_are_the_json_dockerd_decodes() {
        assert_eq!(json(&ErrReply::default()), r#"{"Err":""}"#);
        assert_eq!(
            json(&ErrReply {
                err: "no such volume".into()
            }),
            r#"{"Err":"no such volume"}"#
        );
        assert_eq!(
            json(&MountpointReply::at("/mnt/bai-s3/v".into())),
            r#"{"Mountpoint":"/mnt/bai-s3/v","Err":""}"#
        );
        let volume = |mountpoint: &str| Volume {
            name: "v".into(),
            mountpoint: mountpoint.into(),
            created_at: Some("2026-11-25T00:00:00Z".into()),
            status: Some([("health".to_string(), json!("ok"))].into_iter().collect()),
        };
        assert_eq!(
            json(&GetReply {
                volume: volume("/mnt/bai-s3/v"),
                err: String::new()
            }),
            r#"{"Volume":{"Name":"v","Mountpoint":"/mnt/bai-s3/v","CreatedAt":"2026-11-25T00:00:00Z","Status":{"health":"ok"}},"Err":""}"#
        );
        assert_eq!(
            json(&ListReply {
                volumes: vec![volume("")],
                err: String::new()
            }),
            r#"{"Volumes":[{"Name":"v","CreatedAt":"2026-11-25T00:00:00Z","Status":{"health":"ok"}}],"Err":""}"#
        );
        assert_eq!(
            json(&CapabilitiesReply {
                capabilities: Capabilities { scope: "local" }
            }),
            r#"{"Capabilities":{"Scope":"local"}}"#
        );
        assert_eq!(
            json(&ActivateReply {
                implements: vec!["VolumeDriver"]
            }),
            r#"{"Implements":["VolumeDriver"]}"#
        );
    }

    /// `docker volume inspect`'s Status: the options a volume set (`umask` as octal text, no
    /// `prefix` when it has none), its mount state, and messages only when there are some; a
    /// volume whose stored options are refused shows the bucket as stored and why.
    #[test]
    fn status_has_the_shape_docker_volume_inspect_shows() {
        use crate::driver::Problem;
        use crate::mounter::Health;
        use crate::options::VolumeOptions;
        use std::time::{Duration, UNIX_EPOCH};

        let opts: BTreeMap<String, String> =
            [("bucket", "team-data"), ("uid", "1000"), ("umask", "027")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let parsed = VolumeOptions::parse("v", &opts, "backends.toml").unwrap();
        let status = VolumeStatus {
            settings: Shown::Parsed(parsed),
            mounted: true,
            holders: 2,
            health: Health::Ok,
            since: UNIX_EPOCH + Duration::from_secs(86_400),
            last_error: None,
            problem: None,
        };
        assert_eq!(
            Value::Object(status_json(&status)),
            json!({
                "backend": "default", "bucket": "team-data", "ro": false, "uid": 1000, "gid": 0,
                "umask": "027", "mounted": true, "holders": 2, "health": "ok",
                "since": "1970-01-02T00:00:00Z",
            })
        );

        let stored: BTreeMap<String, String> = [("bucket", "b"), ("prefix", "p/"), ("gone", "1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let refused = VolumeOptions::parse("v", &stored, "backends.toml").unwrap_err();
        let problem = Problem::Refused(refused);
        let status = VolumeStatus {
            settings: Shown::Refused(stored),
            mounted: false,
            holders: 0,
            health: Health::NotMounted,
            since: UNIX_EPOCH,
            last_error: None,
            problem: Some(problem.clone()),
        };
        assert_eq!(
            Value::Object(status_json(&status)),
            json!({
                "bucket": "b", "prefix": "p/", "mounted": false, "holders": 0,
                "health": "not mounted", "since": "1970-01-01T00:00:00Z",
                "problem": problem.to_string(),
            })
        );
        assert!(problem
            .to_string()
            .starts_with("its stored options are refused by this bai-s3"));
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
