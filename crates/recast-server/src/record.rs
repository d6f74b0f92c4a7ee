//! Release records: the server-owned, versioned form of a release, as stored in the state
//! store's `releases.spec` column.
//!
//! A record is converted explicitly from the spec model ([`ReleaseRecord::from_spec`]) and back
//! into what the engine runs ([`ReleaseRecord::service`]). Its `schema` says which recast wrote
//! it: a record without one is schema 1 (the `ReleaseSpec` JSON of earlier versions, read as
//! is); a record with a schema newer than [`SCHEMA`] is refused with an error naming both.
//!
//! Reading a record written by an older spec model fills the fields the model gained since with
//! their defaults (every field added to `recast_spec::Service` must have one: a test below
//! checks it); fields this recast does not know are ignored. The release hash is taken over a
//! canonical form — the record decoded into the current model, serialised with sorted keys —
//! so a field added to the model changes neither what an old release means nor its hash.

use recast_spec::Service;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The record schema this recast writes, and the newest it reads.
pub const SCHEMA: u32 = 2;

/// The schema of a record written before records had one.
fn schema_1() -> u32 {
    1
}

/// A release as recorded: the service it runs and the image digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    #[serde(default = "schema_1")]
    pub schema: u32,
    pub digest: String,
    /// The image's name (a key of the spec's `image` blocks).
    pub image: String,
    /// The service, as the spec model serialised it when the record was written: decoded into
    /// the current model by [`ReleaseRecord::service`].
    pub service: Value,
    /// Where the image can be pulled from when the project has a `registry` block (absent in
    /// records written without one, and by earlier recasts). Not part of the release hash:
    /// it says where the image is, not what the release runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<ImageSource>,
    /// The secrets the service uses, by name: a keyed digest (part of the release hash, so a
    /// changed value is a new release) and the value sealed with the data directory's key
    /// (`crate::sealed`), to start instances again. Never the value itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SealedSecret>,
    /// Which release this is, for errors ("release 3 of web"); not stored.
    #[serde(skip)]
    origin: String,
}

/// A secret of a release, as stored: its keyed digest and its sealed value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    pub digest: String,
    pub sealed: String,
}

/// The digests of `secrets` by name: what the release hash covers of them.
pub fn secret_digests(secrets: &BTreeMap<String, SealedSecret>) -> BTreeMap<String, String> {
    secrets
        .iter()
        .map(|(k, v)| (k.clone(), v.digest.clone()))
        .collect()
}

/// Where a release's image was pushed: a registry reference pinned to the release's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSource {
    /// `HOST[:PORT]/PREFIX/IMAGE@sha256:…`.
    pub reference: String,
    /// Spoken to over plain HTTP (loopback hosts always are).
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "{origin} was written by a newer recast (schema {schema}); this recast reads up to {known}"
    )]
    Newer {
        origin: String,
        schema: u32,
        known: u32,
    },
    #[error("{origin} is unreadable: {error}")]
    Unreadable {
        origin: String,
        error: serde_json::Error,
    },
    #[error("{origin} does not fit this recast's spec model: {error}")]
    Model {
        origin: String,
        error: serde_json::Error,
    },
}

impl ReleaseRecord {
    /// The record of a new release of `service`, running `image` at `digest`.
    pub fn from_spec(service: &Service, digest: &str, image: &str) -> ReleaseRecord {
        ReleaseRecord {
            schema: SCHEMA,
            digest: digest.to_string(),
            image: image.to_string(),
            // A `Service` is plain data (maps with string keys, no custom serialisers): turning
            // it into a `Value` cannot fail.
            service: serde_json::to_value(service).unwrap_or_default(),
            registry: None,
            secrets: BTreeMap::new(),
            origin: format!("the new release of {}", service.name),
        }
    }

    /// The record, with the secrets its service uses.
    pub fn with_secrets(mut self, secrets: BTreeMap<String, SealedSecret>) -> ReleaseRecord {
        self.secrets = secrets;
        self
    }

    /// The record, saying where its image can be pulled from (when it was pushed).
    pub fn with_source(mut self, source: Option<ImageSource>) -> ReleaseRecord {
        self.registry = source;
        self
    }

    /// Decode a stored record of release `number` of `service`.
    pub fn parse(json: &str, service: &str, number: i64) -> Result<ReleaseRecord, RecordError> {
        let origin = format!("release {number} of {service}");
        let mut record: ReleaseRecord =
            serde_json::from_str(json).map_err(|error| RecordError::Unreadable {
                origin: origin.clone(),
                error,
            })?;
        if record.schema > SCHEMA {
            return Err(RecordError::Newer {
                origin,
                schema: record.schema,
                known: SCHEMA,
            });
        }
        record.origin = origin;
        Ok(record)
    }

    /// Decode the record of a release row.
    pub fn read(row: &recast_state::Release) -> Result<ReleaseRecord, RecordError> {
        ReleaseRecord::parse(&row.spec, &row.service, row.number)
    }

    /// The stored form (always the current schema).
    pub fn to_json(&self) -> String {
        let mut out = self.clone();
        out.schema = SCHEMA;
        // Strings and a `Value`: serialising cannot fail.
        serde_json::to_string(&out).unwrap_or_default()
    }

    /// The service as the current spec model sees it: fields it gained since the record was
    /// written take their defaults, fields it does not know are ignored.
    pub fn service(&self) -> Result<Service, RecordError> {
        Service::deserialize(&self.service).map_err(|error| RecordError::Model {
            origin: self.origin.clone(),
            error,
        })
    }

    /// The release hash, over the canonical form (see [`canonical_hash`]).
    pub fn hash(&self) -> Result<String, RecordError> {
        Ok(canonical_hash(
            &self.service()?,
            &self.digest,
            &self.image,
            &secret_digests(&self.secrets),
        ))
    }
}

/// The hash identifying a release: SHA-256 of `{"digest","image","service"}` with the service
/// serialised by the current model and every object's keys sorted. Two releases hash the same
/// exactly when they run the same image digest with the same settings, whichever model version
/// wrote them. (For records written by an unchanged model this equals the hash earlier
/// versions stored in `releases.spec_hash`.)
pub fn canonical_hash(
    service: &Service,
    digest: &str,
    image: &str,
    secrets: &BTreeMap<String, String>,
) -> String {
    let mut form = serde_json::json!({
        "digest": digest,
        "image": image,
        "service": serde_json::to_value(service).unwrap_or_default(),
    });
    // Only when there are some: the hash of a release without secrets is what it always was.
    if !secrets.is_empty() {
        form["secrets"] = serde_json::to_value(secrets).unwrap_or_default();
    }
    let bytes = serde_json::to_vec(&canonical(form)).unwrap_or_default();
    recast_image::Digest::of(&bytes).hex().to_string()
}

/// `v` with every object's keys in sorted order, whether or not serde_json's `preserve_order`
/// feature is on somewhere in the build.
pub fn canonical(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by recast before records had a schema (`ReleaseSpec::new` of the spec in
    /// `release-schema1.hcl`), with the hash it stored beside it.
    const SCHEMA_1: &str = include_str!("../tests/fixtures/release-schema1.json");
    /// Its hash under today's model: a field the model gains (with its default) is part of
    /// the canonical form, so this changes with the model (last: `protocol`, `allow_from`, `egress`), never with
    /// the schema a record was written in.
    const SCHEMA_1_HASH: &str = "71199a8d925d403da5a4ad24f8de1a3796f0a97bd3a70f07d751c8fab3e9fc2e";
    /// The same release as a recast before `stop_timeout`, `tmpfs`, `user_namespace` and
    /// exclusive volumes wrote it (optional fields absent too).
    const SCHEMA_1_OLDER: &str =
        include_str!("../tests/fixtures/release-schema1-before-stop-timeout.json");

    #[test]
    fn a_schema_1_record_reads_and_keeps_its_hash() {
        let r = ReleaseRecord::parse(SCHEMA_1, "web", 3).expect("record parses");
        assert_eq!(r.schema, 1);
        let svc = r.service().expect("record fits the model");
        assert_eq!(svc.name, "web");
        assert_eq!(svc.instances, 3);
        assert_eq!(r.hash().expect("record hashes"), SCHEMA_1_HASH);
        // Written again, it is the current schema and means the same.
        let again = ReleaseRecord::parse(&r.to_json(), "web", 3).expect("record parses");
        assert_eq!(again.schema, SCHEMA);
        assert_eq!(again.service().expect("record fits the model"), svc);
        assert_eq!(again.hash().expect("record hashes"), SCHEMA_1_HASH);
    }

    #[test]
    fn missing_fields_take_their_defaults_and_hash_the_same() {
        let old = ReleaseRecord::parse(SCHEMA_1_OLDER, "web", 1).expect("record parses");
        let svc = old.service().expect("record fits the model");
        assert_eq!(svc.stop_timeout, recast_spec::DEFAULT_STOP_TIMEOUT);
        assert!(svc.tmpfs.is_empty() && !svc.user_namespace && svc.guard.is_none());
        assert!(!svc.volumes[0].exclusive);
        let new = ReleaseRecord::parse(SCHEMA_1, "web", 3).expect("record parses");
        assert_eq!(svc, new.service().expect("record fits the model"));
        assert_eq!(old.hash().expect("record hashes"), SCHEMA_1_HASH);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut v: Value = serde_json::from_str(SCHEMA_1).expect("fixture is JSON");
        v["schema"] = SCHEMA.into();
        v["written_by"] = "a later recast".into();
        v["service"]["a_setting_from_the_future"] = serde_json::json!({"x": 1});
        v["service"]["health"]["jitter"] = "1s".into();
        let r = ReleaseRecord::parse(&v.to_string(), "web", 4).expect("record parses");
        assert_eq!(r.hash().expect("record hashes"), SCHEMA_1_HASH);
    }

    #[test]
    fn a_newer_schema_is_a_clear_error() {
        let mut v: Value = serde_json::from_str(SCHEMA_1).expect("fixture is JSON");
        v["schema"] = (SCHEMA + 1).into();
        let e = ReleaseRecord::parse(&v.to_string(), "web", 7).expect_err("must be refused");
        assert_eq!(
            e.to_string(),
            format!(
                "release 7 of web was written by a newer recast (schema {}); this recast reads up to {SCHEMA}",
                SCHEMA + 1
            )
        );
    }

    #[test]
    fn unreadable_records_name_the_release() {
        let e = ReleaseRecord::parse("{", "api", 2).expect_err("must be refused");
        assert!(
            e.to_string().starts_with("release 2 of api is unreadable"),
            "{e}"
        );
        let mut v: Value = serde_json::from_str(SCHEMA_1).expect("fixture is JSON");
        v["service"]["instances"] = "three".into();
        let r = ReleaseRecord::parse(&v.to_string(), "api", 2).expect("record parses");
        let e = r.service().expect_err("must be refused");
        assert!(
            e.to_string().starts_with("release 2 of api does not fit"),
            "{e}"
        );
    }

    #[test]
    fn from_spec_round_trips() {
        let svc = ReleaseRecord::parse(SCHEMA_1, "web", 3)
            .expect("record parses")
            .service()
            .expect("record fits the model");
        let r = ReleaseRecord::from_spec(&svc, "sha256:ab", "web");
        let back = ReleaseRecord::parse(&r.to_json(), "web", 4).expect("record parses");
        assert_eq!(back.schema, SCHEMA);
        assert_eq!(back.service().expect("record fits the model"), svc);
        assert_eq!(
            back.hash().expect("record hashes"),
            r.hash().expect("record hashes")
        );
    }

    #[test]
    fn the_image_source_is_kept_optional_and_outside_the_hash() {
        let old = ReleaseRecord::parse(SCHEMA_1, "web", 3).expect("record parses");
        assert_eq!(old.registry, None);
        assert!(!old.to_json().contains("\"registry\""), "absent, not null");
        let svc = old.service().expect("record fits the model");
        let digest = format!("sha256:{}", "a".repeat(64));
        let source = ImageSource {
            reference: format!("127.0.0.1:5000/team/web@{digest}"),
            insecure: true,
        };
        let r = ReleaseRecord::from_spec(&svc, &digest, "web").with_source(Some(source.clone()));
        let back = ReleaseRecord::parse(&r.to_json(), "web", 4).expect("record parses");
        assert_eq!(back.registry, Some(source));
        let plain = ReleaseRecord::from_spec(&svc, &digest, "web");
        assert_eq!(
            back.hash().expect("record hashes"),
            plain.hash().expect("record hashes")
        );
        // Written without `insecure` (a later recast may drop defaults), it is false.
        let mut v: Value = serde_json::from_str(&r.to_json()).expect("record is JSON");
        v["registry"]
            .as_object_mut()
            .expect("an object")
            .remove("insecure");
        let again = ReleaseRecord::parse(&v.to_string(), "web", 4).expect("record parses");
        assert_eq!(again.registry.map(|s| s.insecure), Some(false));
    }

    #[test]
    fn canonical_sorts_nested_keys() {
        let v = serde_json::json!({"b": [{"z": 1, "a": 2}], "a": {"y": 1, "x": 2}});
        assert_eq!(
            serde_json::to_string(&canonical(v)).expect("serialises"),
            r#"{"a":{"x":2,"y":1},"b":[{"a":2,"z":1}]}"#
        );
    }

    /// The fields of the spec model a record has always carried. Every other field — each one
    /// the model gains from now on — must decode when absent (`#[serde(default)]` or an
    /// `Option`), or releases recorded before it was added stop being readable.
    const ALWAYS_RECORDED: &[&str] = &[
        "name",
        "image",
        "instances",
        "port",
        "env",
        "health",
        "health.check",
        "health.check.kind",
        "health.check.path",
        "health.check.command",
        "health.interval",
        "health.timeout",
        "health.healthy_threshold",
        "health.unhealthy_threshold",
        "health.start_period",
        "volumes",
        "volumes.name",
        "volumes.mount",
        "network",
        "rollout",
        "rollout.strategy",
        "rollout.strategy.kind",
        "rollout.strategy.max_surge",
        "rollout.strategy.max_unavailable",
        "rollout.strategy.min_healthy_time",
        "rollout.strategy.scale_down_delay",
        "rollout.strategy.steps",
        "rollout.strategy.steps.weight",
        "rollout.strategy.sticky",
        "rollout.auto_rollback",
        "rollout.progress_deadline",
        "rollout.analysis.interval",
        "rollout.analysis.min_requests",
        "rollout.analysis.failure_limit",
        "rollout.analysis.inconclusive_limit",
        "guard.scan_interval",
        "guard.on_drift",
    ];

    /// Values of externally tagged enums (`{"percent": 25}`): their key is a variant, not a
    /// field.
    const ENUM_VALUES: &[&str] = &[
        "rollout.strategy.max_surge",
        "rollout.strategy.max_unavailable",
    ];

    /// Every path of a field in `v` (array items share their array's path).
    fn paths(v: &Value, at: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(_) if ENUM_VALUES.contains(&at) => {}
            Value::Object(m) => {
                for (k, child) in m {
                    // Durations are `{secs, nanos}`: part of their field, not fields.
                    if k == "secs" || k == "nanos" {
                        continue;
                    }
                    let p = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    out.push(p.clone());
                    paths(child, &p, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| paths(i, at, out)),
            _ => {}
        }
    }

    fn without(v: &Value, path: &[&str]) -> Value {
        let mut v = v.clone();
        fn go(v: &mut Value, path: &[&str]) {
            match v {
                Value::Object(m) if path.len() == 1 => {
                    m.remove(path[0]);
                }
                Value::Object(m) => {
                    if let Some(c) = m.get_mut(path[0]) {
                        go(c, &path[1..]);
                    }
                }
                Value::Array(items) => items.iter_mut().for_each(|i| go(i, path)),
                _ => {}
            }
        }
        go(&mut v, path);
        v
    }

    #[test]
    fn every_field_added_to_the_model_has_a_default() {
        use recast_spec::*;
        use std::time::Duration;
        let base = ReleaseRecord::parse(SCHEMA_1, "web", 1)
            .expect("record parses")
            .service()
            .expect("record fits the model");
        // Every optional part filled, every strategy and health check in turn.
        let mut services = Vec::new();
        for (strategy, check) in [
            (
                Strategy::Rolling {
                    max_surge: Count::Absolute(1),
                    max_unavailable: Count::Percent(25),
                    min_healthy_time: Duration::from_secs(1),
                },
                HealthCheck::Tcp,
            ),
            (
                Strategy::BlueGreen {
                    preview_listen: Some("127.0.0.1:9000".parse().expect("address parses")),
                    auto_promote_after: Some(Duration::from_secs(5)),
                    scale_down_delay: Duration::from_secs(30),
                },
                HealthCheck::Exec {
                    command: vec!["true".into()],
                },
            ),
            (base.rollout.strategy.clone(), base.health.check.clone()),
            (Strategy::Recreate, HealthCheck::Tcp),
        ] {
            let mut s = base.clone();
            s.rollout.strategy = strategy;
            s.health.check = check;
            s.cpus = Some(0.5);
            s.stop_signal = Some("SIGQUIT".into());
            s.tmpfs = vec!["/tmp".into()];
            s.guard = Some(Guard::default());
            if let Some(a) = &mut s.rollout.analysis {
                a.max_p99_latency = Some(Duration::from_millis(300));
            }
            services.push(s);
        }
        for s in services {
            let v = serde_json::to_value(&s).expect("service serialises");
            let mut all = Vec::new();
            paths(&v, "", &mut all);
            all.sort();
            all.dedup();
            for p in all {
                if ALWAYS_RECORDED.contains(&p.as_str()) {
                    continue;
                }
                let parts: Vec<&str> = p.split('.').collect();
                let trimmed = without(&v, &parts);
                if let Err(e) = Service::deserialize(&trimmed) {
                    panic!(
                        "a recorded service without `{p}` does not decode ({e}): give the field \
                         a default (#[serde(default)]) so older releases stay readable"
                    );
                }
            }
        }
    }
}
