//! What a job computes, as a fingerprint: the semantic view of the spec (everything but how a
//! run is operated), its hash, and the changes between two views that a refused resume names.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::JobSpec;

impl JobSpec {
    /// The settings that decide what a job computes, as JSON: everything but how this run is
    /// operated and published (output place, licence, `limit`, endpoints' URLs and replicas, concurrency, timeouts, latency, retries,
    /// rate limits, prices). Two specs with the same view (and the same constitution) produce the
    /// same rows.
    pub fn semantic_view(&self, constitution_hash: &str) -> Value {
        let mut view = serde_json::to_value(self).expect("job spec serialises");
        let object = view.as_object_mut().expect("job spec is an object");
        object.remove("output");
        object.remove("license");
        if let Some(input) = object.get_mut("input").and_then(Value::as_object_mut) {
            input.remove("limit");
            input.remove("path");
        }
        if let Some(constitution) = object
            .get_mut("constitution")
            .and_then(Value::as_object_mut)
        {
            constitution.remove("path");
            constitution.insert("hash".into(), Value::from(constitution_hash));
        }
        if let Some(models) = object.get_mut("models").and_then(Value::as_object_mut) {
            for model in models.values_mut().filter_map(Value::as_object_mut) {
                for operational in [
                    "url",
                    "replicas_from_dns",
                    "dns_refresh_s",
                    "api_key_env",
                    "max_concurrency",
                    "max_concurrency_limit",
                    "timeout_s",
                    "max_retries",
                    "retry_budget_s",
                    "rpm",
                    "tpm",
                    "price_in",
                    "price_out",
                    "latency_ms",
                    "threads",
                    // Batch or direct, a call's body and its answer are the same.
                    "batch",
                    "batch_size",
                    "batch_wait_s",
                    "batch_price_in",
                    "batch_price_out",
                ] {
                    model.remove(operational);
                }
                // Where the GGUF file lies is operational; which file it is, is not.
                if let Some(Value::String(file)) = model.remove("path") {
                    let name = Path::new(&file)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned());
                    model.insert("file".into(), Value::from(name.unwrap_or(file)));
                }
            }
        }
        view
    }

    /// SHA-256 of the semantic view: equal fingerprints mean a run may resume another.
    pub fn fingerprint(&self, constitution_hash: &str) -> String {
        let view = self.semantic_view(constitution_hash);
        hex::encode(Sha256::digest(view.to_string().as_bytes()))
    }
}

/// Lists what differs between two semantic views, one `field: old → new` per line.
pub fn describe_changes(old: &Value, new: &Value) -> Vec<String> {
    fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    flatten(&path, inner, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let (mut before, mut after) = (BTreeMap::new(), BTreeMap::new());
    flatten("", old, &mut before);
    flatten("", new, &mut after);
    let mut fields: Vec<&String> = before.keys().chain(after.keys()).collect();
    fields.sort();
    fields.dedup();
    fields
        .into_iter()
        .filter(|field| before.get(*field) != after.get(*field))
        .map(|field| {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
            format!(
                "{field}: {} → {}",
                show(before.get(field)),
                show(after.get(field))
            )
        })
        .collect()
}
