//! AdmissionReview `admission.k8s.io/v1` on the wire (PROTOCOL.md §H).
//!
//! Our own types rather than kube-core's: kube-core 5.0's `AdmissionResponse` serializes the
//! patch as an array of numbers (kube-rs/kube#1781); the apiserver wants standard base64 text.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The only AdmissionReview version Gantry speaks; the manifest lists exactly this one.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The `kind` of both the request and the reply.
pub const KIND: &str = "AdmissionReview";
/// The only patch type the apiserver accepts from a mutating webhook.
pub const PATCH_TYPE_JSON_PATCH: &str = "JSONPatch";

/// An incoming AdmissionReview, read leniently so a bad one can be refused with a message.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReviewIn {
    /// Must be `admission.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// Must be `AdmissionReview`.
    #[serde(default)]
    pub kind: String,
    /// The request; absent means the review is malformed.
    #[serde(default)]
    pub request: Option<AdmissionRequest>,
}

/// Group, version and kind of the object under review.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct GroupVersionKind {
    /// API group; empty for core objects such as Pod.
    #[serde(default)]
    pub group: String,
    /// API version, e.g. `v1`.
    #[serde(default)]
    pub version: String,
    /// Kind, e.g. `Pod`.
    #[serde(default)]
    pub kind: String,
}

/// The part of `request` Gantry reads; unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Echoed in the reply; the apiserver rejects a reply with another uid.
    pub uid: String,
    /// What the object is; only `Pod` is ever mutated.
    #[serde(default)]
    pub kind: GroupVersionKind,
    /// Set for subresources (`pods/binding`), which are never mutated.
    #[serde(default)]
    pub sub_resource: Option<String>,
    /// The namespace of the request; `object.metadata.namespace` may be empty on CREATE.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`; only CREATE is mutated.
    #[serde(default)]
    pub operation: String,
    /// The object as it would be stored; decoded into a Pod only when the kind says Pod.
    #[serde(default)]
    pub object: Option<serde_json::Value>,
    /// True when the request will not be persisted.
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// The reply envelope: `apiVersion`, `kind` and `response` are all required by the apiserver.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReviewOut {
    /// Always `admission.k8s.io/v1`.
    pub api_version: String,
    /// Always `AdmissionReview`.
    pub kind: String,
    /// The verdict.
    pub response: AdmissionResponse,
}

impl AdmissionReviewOut {
    /// Wraps a response in the v1 envelope.
    pub fn new(response: AdmissionResponse) -> Self {
        AdmissionReviewOut {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            response,
        }
    }
}

/// The verdict on one request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    /// The request's uid, echoed.
    pub uid: String,
    /// Whether the object is admitted.
    pub allowed: bool,
    /// `JSONPatch` exactly when `patch` is present (the apiserver checks both or neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Standard base64 of the JSON Patch text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Why a request was denied; ignored by the apiserver when allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ResponseStatus>,
    /// Shown to the client (kubectl prints them); kept short.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The `metav1.Status` subset a denial carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResponseStatus {
    /// HTTP-like code; 403 for a refused hint.
    pub code: u16,
    /// `Forbidden`.
    pub reason: String,
    /// The precise, human-readable reason.
    pub message: String,
}

impl AdmissionResponse {
    /// Admits the object unchanged.
    pub fn allow(uid: &str) -> Self {
        AdmissionResponse {
            uid: uid.to_string(),
            allowed: true,
            patch_type: None,
            patch: None,
            status: None,
            warnings: Vec::new(),
        }
    }

    /// Admits the object with a JSON Patch, given as its JSON text; it is base64-encoded here.
    pub fn allow_with_patch(uid: &str, patch_json: &[u8]) -> Self {
        AdmissionResponse {
            patch_type: Some(PATCH_TYPE_JSON_PATCH.to_string()),
            patch: Some(base64::engine::general_purpose::STANDARD.encode(patch_json)),
            ..AdmissionResponse::allow(uid)
        }
    }

    /// Refuses the object with code 403 and `message`.
    pub fn deny(uid: &str, message: String) -> Self {
        AdmissionResponse {
            allowed: false,
            status: Some(ResponseStatus {
                code: 403,
                reason: "Forbidden".to_string(),
                message,
            }),
            ..AdmissionResponse::allow(uid)
        }
    }

    /// Adds client-visible warnings.
    pub fn with_warnings(mut self, warnings: Vec<String>) -> Self {
        self.warnings = warnings;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_is_standard_base64_text_as_in_the_protocol() {
        let patch = br#"[{"op":"add","path":"/spec/schedulerName","value":"gantry"},{"op":"add","path":"/metadata/annotations/gantry.dev~1zone","value":"zone-a"}]"#;
        let out = AdmissionReviewOut::new(AdmissionResponse::allow_with_patch(
            "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4",
            patch,
        ));
        let text = serde_json::to_string(&out).unwrap();
        assert_eq!(
            text,
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"0c9a8d74-9cb7-44dd-b98e-09fd62def2f4","allowed":true,"patchType":"JSONPatch","patch":"W3sib3AiOiJhZGQiLCJwYXRoIjoiL3NwZWMvc2NoZWR1bGVyTmFtZSIsInZhbHVlIjoiZ2FudHJ5In0seyJvcCI6ImFkZCIsInBhdGgiOiIvbWV0YWRhdGEvYW5ub3RhdGlvbnMvZ2FudHJ5LmRldn4xem9uZSIsInZhbHVlIjoiem9uZS1hIn1d"}}"#
        );
    }

    #[test]
    fn allow_and_deny_match_the_protocol() {
        let uid = "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4";
        assert_eq!(
            serde_json::to_string(&AdmissionReviewOut::new(AdmissionResponse::allow(uid))).unwrap(),
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"0c9a8d74-9cb7-44dd-b98e-09fd62def2f4","allowed":true}}"#
        );
        let deny = AdmissionResponse::deny(
            uid,
            "placement hint gantry.dev/zone=zone-z is not a known zone".to_string(),
        );
        assert_eq!(
            serde_json::to_string(&AdmissionReviewOut::new(deny)).unwrap(),
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"0c9a8d74-9cb7-44dd-b98e-09fd62def2f4","allowed":false,"status":{"code":403,"reason":"Forbidden","message":"placement hint gantry.dev/zone=zone-z is not a known zone"}}}"#
        );
    }
}
