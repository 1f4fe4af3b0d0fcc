//! AdmissionReview (admission.k8s.io/v1) on the wire: parsing and checking
//! the request, writing the response.
//!
//! Own types rather than kube-core's: the object stays raw JSON (patches
//! must not depend on which fields a typed model knows), each missing field
//! gets its own one-line error, and the response's `patch` is written as the
//! base64 string the API server expects.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `apiVersion` of the only AdmissionReview version served.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// `kind` of an AdmissionReview.
pub const KIND: &str = "AdmissionReview";

/// A request the webhook cannot answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body is not JSON of the AdmissionReview shape.
    #[error("malformed AdmissionReview JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `apiVersion`/`kind` are not admission.k8s.io/v1 AdmissionReview.
    #[error(
        "expected apiVersion admission.k8s.io/v1 kind AdmissionReview, got apiVersion {api_version:?} kind {kind:?} (set admissionReviewVersions: [v1])"
    )]
    WrongType {
        /// What was sent.
        api_version: String,
        /// What was sent.
        kind: String,
    },
    /// No `request` member.
    #[error("AdmissionReview has no request")]
    MissingRequest,
    /// A required request field is absent or empty.
    #[error("AdmissionReview request has no {0}")]
    MissingField(&'static str),
    /// `request.operation` is not one of the four known ones.
    #[error("unknown operation {0:?} (expected CREATE, UPDATE, DELETE or CONNECT)")]
    Operation(String),
}

/// Group, version, kind of the reviewed object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
pub struct GroupVersionKind {
    /// API group, empty for the core group.
    #[serde(default)]
    pub group: String,
    /// API version.
    #[serde(default)]
    pub version: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
}

impl std::fmt::Display for GroupVersionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}/{}", self.version, self.kind)
        } else {
            write!(f, "{}/{}/{}", self.group, self.version, self.kind)
        }
    }
}

/// Admission operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Object creation.
    Create,
    /// Object update.
    Update,
    /// Object deletion.
    Delete,
    /// Connect (exec, attach, proxy…).
    Connect,
}

impl Operation {
    /// Wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }
}

/// A checked admission request.
#[derive(Debug, Clone)]
pub struct AdmissionRequest {
    /// Echoed in the response.
    pub uid: String,
    /// Kind of the object.
    pub kind: GroupVersionKind,
    /// Namespace of the request (empty for cluster-scoped).
    pub namespace: String,
    /// Object name (empty for generateName creates).
    pub name: String,
    /// Operation.
    pub operation: Operation,
    /// Dry run: answered the same; the webhook has no side effects.
    pub dry_run: bool,
    /// The object (absent for DELETE and CONNECT).
    pub object: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireReview {
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<WireRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest {
    uid: Option<String>,
    kind: Option<GroupVersionKind>,
    namespace: Option<String>,
    name: Option<String>,
    operation: Option<String>,
    dry_run: Option<bool>,
    object: Option<Value>,
}

/// Parses and checks an AdmissionReview body.
pub fn parse_review(body: &[u8]) -> Result<AdmissionRequest, ReviewError> {
    let wire: WireReview = serde_json::from_slice(body)?;
    let api_version = wire.api_version.unwrap_or_default();
    let kind = wire.kind.unwrap_or_default();
    if api_version != API_VERSION || kind != KIND {
        return Err(ReviewError::WrongType { api_version, kind });
    }
    let req = wire.request.ok_or(ReviewError::MissingRequest)?;
    let uid = req
        .uid
        .filter(|u| !u.is_empty())
        .ok_or(ReviewError::MissingField("uid"))?;
    let kind = req
        .kind
        .filter(|k| !k.kind.is_empty())
        .ok_or(ReviewError::MissingField("kind"))?;
    let op = req
        .operation
        .ok_or(ReviewError::MissingField("operation"))?;
    let operation = match op.as_str() {
        "CREATE" => Operation::Create,
        "UPDATE" => Operation::Update,
        "DELETE" => Operation::Delete,
        "CONNECT" => Operation::Connect,
        _ => return Err(ReviewError::Operation(op)),
    };
    let object = req.object.filter(|o| !o.is_null());
    if matches!(operation, Operation::Create | Operation::Update) && object.is_none() {
        return Err(ReviewError::MissingField("object"));
    }
    Ok(AdmissionRequest {
        uid,
        kind,
        namespace: req.namespace.unwrap_or_default(),
        name: req.name.unwrap_or_default(),
        operation,
        dry_run: req.dry_run.unwrap_or(false),
        object,
    })
}

/// The `response` member of an AdmissionReview.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    /// The request's uid.
    pub uid: String,
    /// Always true: this webhook mutates, it never denies.
    pub allowed: bool,
    /// `"JSONPatch"` when `patch` is set, else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// Base64 of the JSON Patch document, else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Shown to the client (kubectl prints them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Recorded in the audit log (keys get the webhook name as prefix).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub audit_annotations: BTreeMap<String, String>,
}

impl AdmissionResponse {
    /// Allowed, nothing changed.
    pub fn allow(uid: &str) -> Self {
        AdmissionResponse {
            uid: uid.to_owned(),
            allowed: true,
            patch_type: None,
            patch: None,
            warnings: Vec::new(),
            audit_annotations: BTreeMap::new(),
        }
    }

    /// Allowed with a JSON Patch (serialised JSON, base64-encoded here).
    pub fn with_patch(mut self, patch_json: &[u8]) -> Self {
        self.patch_type = Some("JSONPatch");
        self.patch = Some(base64::engine::general_purpose::STANDARD.encode(patch_json));
        self
    }

    /// Wraps the response into a full AdmissionReview body.
    pub fn into_review_json(self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out {
            api_version: &'static str,
            kind: &'static str,
            response: AdmissionResponse,
        }
        serde_json::to_vec(&Out {
            api_version: API_VERSION,
            kind: KIND,
            response: self,
        })
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_of_patch_and_no_patch() {
        let v: Value = serde_json::from_slice(
            &AdmissionResponse::allow("u1")
                .with_patch(br#"[{"op":"add","path":"/a","value":1}]"#)
                .into_review_json(),
        )
        .unwrap();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], "u1");
        assert_eq!(v["response"]["allowed"], true);
        assert_eq!(v["response"]["patchType"], "JSONPatch");
        assert_eq!(
            v["response"]["patch"],
            "W3sib3AiOiJhZGQiLCJwYXRoIjoiL2EiLCJ2YWx1ZSI6MX1d"
        );
        let v: Value =
            serde_json::from_slice(&AdmissionResponse::allow("u2").into_review_json()).unwrap();
        let resp = v["response"].as_object().unwrap();
        let mut keys: Vec<_> = resp.keys().collect();
        keys.sort();
        assert_eq!(keys, ["allowed", "uid"]);
    }

    #[test]
    fn bad_requests_give_one_line_errors() {
        let cases: [(&str, &str); 7] = [
            ("{", "malformed"),
            (
                r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#,
                "v1beta1",
            ),
            (
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
                "no request",
            ),
            (
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"kind":"Pod","version":"v1"},"operation":"CREATE","object":{}}}"#,
                "no uid",
            ),
            (
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","kind":{"kind":"Pod","version":"v1"},"operation":"PATCH","object":{}}}"#,
                "unknown operation",
            ),
            (
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","kind":{"kind":"Pod","version":"v1"},"operation":"CREATE"}}"#,
                "no object",
            ),
            ("[1,2]", "malformed"),
        ];
        for (body, want) in cases {
            let err = parse_review(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
