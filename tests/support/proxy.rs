//! A small fault-injecting HTTP proxy in front of moto.
//!
//! It forwards EC2 query-protocol requests unchanged, except that chosen actions are answered
//! with an injected fault a given number of times: an error reply (`InsufficientInstanceCapacity`,
//! `RequestLimitExceeded`, a bare 500), or, for CreateFleet, the reply real EC2 gives when pools
//! are dry: HTTP 200 with `Errors[]` and no instance, or moto's instance plus injected errors.
//! Every request is logged (action, parameters, time) for assertions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// What to answer instead of forwarding.
#[derive(Debug, Clone)]
pub enum Fault {
    /// An EC2 error reply with this HTTP status and code.
    Error {
        /// HTTP status.
        status: u16,
        /// EC2 error code.
        code: &'static str,
    },
    /// A 500 with no EC2 error body.
    Bare500,
    /// CreateFleet only: HTTP 200 with one `Errors[]` entry per failing override.
    FleetErrors {
        /// The error code of each entry.
        code: &'static str,
        /// Which instance types fail; `None` = every override.
        fail_types: Option<Vec<String>>,
        /// Also forward to moto and keep the instance it launches (a partial success).
        launch: bool,
    },
    /// Forward to moto, then answer a bare 500: the call took effect but its reply was lost.
    LostReply,
}

/// One logged request.
#[derive(Debug, Clone)]
pub struct Logged {
    /// `Action` parameter.
    pub action: String,
    /// Decoded form parameters.
    pub params: BTreeMap<String, String>,
    /// When it arrived.
    pub at: Instant,
    /// Whether a fault answered it.
    pub faulted: bool,
}

#[derive(Default)]
struct Inner {
    rules: Vec<(String, Fault, u32)>,
    log: Vec<Logged>,
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    inner: Arc<Mutex<Inner>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A running proxy; it lives as long as the test's runtime.
#[derive(Clone)]
pub struct Proxy {
    /// Base URL to point the SDK at.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl Proxy {
    /// Binds 127.0.0.1:0 and serves in the current runtime.
    pub async fn start(upstream: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(Mutex::new(Inner::default()));
        let shared = Shared {
            upstream: upstream.to_string(),
            inner: inner.clone(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        let app = axum::Router::new().fallback(handle).with_state(shared);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Proxy { url, inner }
    }

    /// Answers the next `times` requests of `action` with `fault`.
    pub fn fail(&self, action: &str, fault: Fault, times: u32) {
        self.inner
            .lock()
            .unwrap()
            .rules
            .push((action.to_string(), fault, times));
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        self.inner.lock().unwrap().log.clone()
    }

    /// The logged requests of one action.
    pub fn calls(&self, action: &str) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| l.action == action)
            .collect()
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_form(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn xml(status: u16, body: String) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
        body,
    )
        .into_response()
}

fn error_reply(status: u16, code: &str) -> Response {
    xml(
        status,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error></Errors><RequestID>injected</RequestID></Response>"
        ),
    )
}

/// The overrides of a CreateFleet request: (launch template id, instance type, subnet).
fn overrides(params: &BTreeMap<String, String>) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for c in 1.. {
        let prefix = format!("LaunchTemplateConfigs.{c}.");
        let Some(lt) = params.get(&format!(
            "{prefix}LaunchTemplateSpecification.LaunchTemplateId"
        )) else {
            break;
        };
        for o in 1.. {
            let op = format!("{prefix}Overrides.{o}.");
            let Some(t) = params.get(&format!("{op}InstanceType")) else {
                break;
            };
            let subnet = params
                .get(&format!("{op}SubnetId"))
                .cloned()
                .unwrap_or_default();
            out.push((lt.clone(), t.clone(), subnet));
        }
    }
    out
}

fn fleet_error_items(
    params: &BTreeMap<String, String>,
    code: &str,
    fail_types: &Option<Vec<String>>,
) -> String {
    let lifecycle = params
        .get("TargetCapacitySpecification.DefaultTargetCapacityType")
        .cloned()
        .unwrap_or_else(|| "on-demand".to_string());
    overrides(params)
        .into_iter()
        .filter(|(_, t, _)| fail_types.as_ref().is_none_or(|f| f.contains(t)))
        .map(|(lt, t, subnet)| {
            format!(
                "<item><launchTemplateAndOverrides><launchTemplateSpecification><launchTemplateId>{lt}</launchTemplateId><version>1</version></launchTemplateSpecification><overrides><instanceType>{t}</instanceType><subnetId>{subnet}</subnetId></overrides></launchTemplateAndOverrides><lifecycle>{lifecycle}</lifecycle><errorCode>{code}</errorCode><errorMessage>There is no {lifecycle} capacity for {t} (injected).</errorMessage></item>"
            )
        })
        .collect()
}

async fn handle(State(s): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    let params = parse_form(&body);
    let action = params.get("Action").cloned().unwrap_or_default();
    let fault = {
        let mut inner = s.inner.lock().unwrap();
        let fault = inner
            .rules
            .iter_mut()
            .find(|(a, _, n)| *a == action && *n > 0)
            .map(|(_, f, n)| {
                *n -= 1;
                f.clone()
            });
        inner.log.push(Logged {
            action: action.clone(),
            params: params.clone(),
            at: Instant::now(),
            faulted: fault.is_some(),
        });
        fault
    };
    match fault {
        Some(Fault::Error { status, code }) => return error_reply(status, code),
        Some(Fault::Bare500) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Some(Fault::FleetErrors {
            code,
            fail_types,
            launch: false,
        }) => {
            let items = fleet_error_items(&params, code, &fail_types);
            return xml(
                200,
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CreateFleetResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>injected</requestId><fleetId>fleet-injected</fleetId><errorSet>{items}</errorSet><fleetInstanceSet/></CreateFleetResponse>"
                ),
            );
        }
        _ => {}
    }
    // Forward unchanged.
    let uri = format!(
        "{}{}",
        s.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut fwd = hyper::Request::builder().method(parts.method).uri(uri);
    for (k, v) in &parts.headers {
        if k != header::HOST {
            fwd = fwd.header(k, v);
        }
    }
    let fwd = fwd.body(Full::new(body)).unwrap();
    let resp = match s.client.request(fwd).await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let (rparts, rbody) = resp.into_parts();
    let rbody = match rbody.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    if let Some(Fault::LostReply) = fault {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    if let Some(Fault::FleetErrors {
        code, fail_types, ..
    }) = fault
    {
        // Partial success: moto's instance plus injected errors, appended last so they win.
        let text = String::from_utf8_lossy(&rbody).into_owned();
        let items = fleet_error_items(&params, code, &fail_types);
        let text = text.replace(
            "</CreateFleetResponse>",
            &format!("<errorSet>{items}</errorSet></CreateFleetResponse>"),
        );
        return xml(rparts.status.as_u16(), text);
    }
    let mut out = Response::builder().status(rparts.status);
    for (k, v) in &rparts.headers {
        if k != header::CONTENT_LENGTH && k != header::TRANSFER_ENCODING {
            out = out.header(k, v);
        }
    }
    out.body(Body::from(rbody)).unwrap()
}
