//! Extender wire types, byte-compatible with `k8s.io/kube-scheduler/extender/v1`.
//!
//! Requests are parsed leniently: `null` is accepted anywhere, unknown fields are ignored, and
//! full Node objects are kept as raw JSON so that non-cache-mode replies return them unchanged.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// Why a request body could not be used; becomes the reply's `Error` text.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// Empty body.
    #[error("empty request body")]
    Empty,
    /// Not JSON, or JSON of the wrong shape.
    #[error("malformed request body: {0}")]
    Malformed(String),
    /// A field has the wrong type.
    #[error("field {field} {problem}")]
    Field {
        /// The protocol field name.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// Body larger than the configured limit.
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body could not be read in time or at all.
    #[error("request body could not be read: {0}")]
    Read(String),
}

/// Which representation of the candidate nodes the scheduler used; the reply must use the same.
#[derive(Debug, Clone, PartialEq)]
pub enum Candidates {
    /// `nodeCacheCapable: true`: names only.
    Names(Vec<String>),
    /// `nodeCacheCapable: false`: the full `NodeList`, kept raw (its `items` are the nodes).
    Objects {
        /// The NodeList object minus its items.
        list: serde_json::Map<String, Value>,
        /// The Node objects.
        items: Vec<Value>,
    },
}

impl Candidates {
    /// How many candidates there are.
    pub fn len(&self) -> usize {
        match self {
            Candidates::Names(n) => n.len(),
            Candidates::Objects { items, .. } => items.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parsed `ExtenderArgs`.
#[derive(Debug, Clone)]
pub struct ExtenderArgs {
    /// The pod being scheduled.
    pub pod: Pod,
    /// The candidate nodes.
    pub candidates: Candidates,
}

/// Parses an `ExtenderArgs` body.
///
/// # Errors
/// [`WireError`] naming the field at fault; never panics on any input.
pub fn parse_args(body: &[u8]) -> Result<ExtenderArgs, WireError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(WireError::Empty);
    }
    let root: Value =
        serde_json::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    let Value::Object(mut root) = root else {
        return Err(WireError::Malformed("expected a JSON object".into()));
    };
    let pod = match take_ci(&mut root, "Pod") {
        None | Some(Value::Null) => {
            return Err(WireError::Field {
                field: "Pod",
                problem: "is missing".into(),
            });
        }
        Some(mut v @ Value::Object(_)) => {
            strip_nulls(&mut v);
            serde_json::from_value::<Pod>(v).map_err(|e| WireError::Field {
                field: "Pod",
                problem: format!("is not a valid Pod: {e}"),
            })?
        }
        Some(_) => {
            return Err(WireError::Field {
                field: "Pod",
                problem: "must be an object".into(),
            });
        }
    };
    let names = match take_ci(&mut root, "NodeNames") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut names = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => names.push(s),
                    Value::Null => {}
                    _ => {
                        return Err(WireError::Field {
                            field: "NodeNames",
                            problem: "must be an array of strings".into(),
                        });
                    }
                }
            }
            Some(names)
        }
        Some(_) => {
            return Err(WireError::Field {
                field: "NodeNames",
                problem: "must be an array of strings".into(),
            });
        }
    };
    let objects = match take_ci(&mut root, "Nodes") {
        None | Some(Value::Null) => None,
        Some(Value::Object(mut list)) => {
            let items = match list.remove("items") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => {
                    if items.iter().any(|i| !i.is_object()) {
                        return Err(WireError::Field {
                            field: "Nodes",
                            problem: "items must be Node objects".into(),
                        });
                    }
                    items
                }
                Some(_) => {
                    return Err(WireError::Field {
                        field: "Nodes",
                        problem: "items must be an array".into(),
                    });
                }
            };
            Some((list, items))
        }
        Some(_) => {
            return Err(WireError::Field {
                field: "Nodes",
                problem: "must be a NodeList object".into(),
            });
        }
    };
    let candidates = match (names, objects) {
        (Some(names), _) => Candidates::Names(names),
        (None, Some((list, items))) => Candidates::Objects { list, items },
        (None, None) => Candidates::Names(Vec::new()),
    };
    Ok(ExtenderArgs { pod, candidates })
}

/// Go decodes JSON keys case-insensitively; so do we, for the top-level protocol fields.
fn take_ci(map: &mut serde_json::Map<String, Value>, key: &str) -> Option<Value> {
    if let Some(v) = map.remove(key) {
        return Some(v);
    }
    let found = map.keys().find(|k| k.eq_ignore_ascii_case(key)).cloned()?;
    map.remove(&found)
}

/// Removes `null` members from objects, recursively, so typed parsing treats them as absent.
pub fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            for v in map.values_mut() {
                strip_nulls(v);
            }
        }
        Value::Array(items) => {
            items.retain(|v| !v.is_null());
            for v in items {
                strip_nulls(v);
            }
        }
        _ => {}
    }
}

/// `ExtenderFilterResult`; all five fields are always serialized, as kube-scheduler expects.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExtenderFilterResult {
    /// Passing nodes in non-cache mode.
    #[serde(rename = "Nodes", default)]
    pub nodes: Option<Value>,
    /// Passing nodes in cache mode.
    #[serde(rename = "NodeNames", default)]
    pub node_names: Option<Vec<String>>,
    /// Nodes rejected for reasons preemption might fix.
    #[serde(rename = "FailedNodes", default)]
    pub failed_nodes: Option<BTreeMap<String, String>>,
    /// Nodes rejected for reasons preemption cannot fix.
    #[serde(rename = "FailedAndUnresolvableNodes", default)]
    pub failed_and_unresolvable_nodes: Option<BTreeMap<String, String>>,
    /// Non-empty means the whole call failed.
    #[serde(rename = "Error", default)]
    pub error: String,
}

impl ExtenderFilterResult {
    /// A whole-call failure, in the shape PROTOCOL.md §C.3 shows.
    pub fn failure(message: impl Into<String>) -> Self {
        ExtenderFilterResult {
            // The scheduler formats this text with Go's fmt; a stray % would garble it.
            error: message.into().replace('%', " percent"),
            ..Default::default()
        }
    }
}

/// One entry of a `HostPriorityList`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPriority {
    /// Node name.
    #[serde(rename = "Host")]
    pub host: String,
    /// 0–10.
    #[serde(rename = "Score")]
    pub score: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_and_missing_fields() {
        let a = parse_args(br#"{"Pod":{"metadata":null,"spec":{"containers":null}},"Nodes":null,"NodeNames":["a",null]}"#).unwrap();
        assert_eq!(a.candidates, Candidates::Names(vec!["a".into()]));
        let e = parse_args(br#"{"Pod":null}"#).unwrap_err();
        assert!(e.to_string().contains("Pod"));
        assert_eq!(parse_args(b"  ").unwrap_err(), WireError::Empty);
        assert!(matches!(parse_args(b"[1]"), Err(WireError::Malformed(_))));
        let e = parse_args(br#"{"Pod":{},"NodeNames":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("NodeNames"), "{e}");
        let e = parse_args(br#"{"Pod":{"spec":{"containers":5}}}"#).unwrap_err();
        assert!(e.to_string().contains("Pod"), "{e}");
    }

    #[test]
    fn case_insensitive_keys_like_go() {
        let a = parse_args(br#"{"pod":{},"nodenames":["n"]}"#).unwrap();
        assert_eq!(a.candidates.len(), 1);
    }

    #[test]
    fn failure_has_all_five_keys_and_no_percent() {
        let v = serde_json::to_value(ExtenderFilterResult::failure("50% full")).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 5);
        assert_eq!(obj["Error"], "50 percent full");
        assert!(obj["NodeNames"].is_null());
    }
}
