//! The SQS interruption source: EventBridge delivers AWS's notices about instances (spot
//! interruption warnings, rebalance recommendations, AWS Health scheduled changes, instance state
//! changes) to a queue, and [`SqsInterruptions`] hands them to the disruption controller.
//!
//! ```text
//!  EventBridge rules ──▶ SQS queue ──ReceiveMessage (long poll, 20 s)──▶ receiver task
//!                                                                          │ read_eventbridge
//!          malformed / ignored ◀──────────────────────────────────────────┤
//!                 │                                    notices ──bounded channel──▶ poll()
//!                 ▼                                                                  │ handed over
//!           deleter task ◀───────────────────────────── receipt handles ◀───────────┘
//!                 └──DeleteMessageBatch──▶ SQS queue
//! ```
//!
//! # Why a background task
//!
//! `Disruption::tick` awaits `poll()` once a second, between the provisioner and the lifecycle
//! controller, so `poll` must return at once. Polling SQS from `poll` with a short wait would
//! either block the tick for the wait or, with no wait (short polling), sample only some of
//! SQS's servers and make 86,400 empty calls a day. So a receiver task long-polls (20 s, the SQS
//! maximum: one call per 20 s when idle, and a message is returned as soon as it arrives) into a
//! bounded channel, and `poll` only drains that channel without I/O. A deleter task deletes each
//! message once `poll` has handed it over (or at once when it is malformed or needs no action):
//! a message that is never deleted comes back after the visibility timeout, forever.
//!
//! # Guarantees
//! - Only the Lease holder should run one (the controllers build it per leadership term), so
//!   two replicas never split or double-handle notices.
//! - At least once: a notice is deleted only after `poll` returned it. One received but not yet
//!   handed over when the source is dropped reappears after the visibility timeout for the next
//!   leader. Duplicates are harmless: the executor refuses a second job for a busy node.
//! - Every message is deleted in the end, malformed ones included (logged and counted), so none
//!   loops forever.
//! - Never panics; errors are classified like EC2's (`crate::cloud::ec2::errors`): throttling and
//!   transient failures back off exponentially with jitter, configuration errors (a missing
//!   queue, denied access) are logged at `error` naming the queue and retried slowly.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::config::retry::{RetryConfig, RetryPartition};
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::config::{BehaviorVersion, Region};
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::interruption::{
    EventBridgeMessage, InterruptionEvent, InterruptionSource, read_eventbridge,
};
use crate::cloud::CloudError;
use crate::cloud::ec2::errors::{Classified, ErrorClass, classify_with};
use crate::metrics::{InterruptionLabels, Metrics, QueueErrorLabels};

/// Every SQS API action the source calls, as IAM names them (DeleteMessageBatch is authorised
/// by `sqs:DeleteMessage`); `manifests/iam-policy.json` grants exactly these.
pub const API_ACTIONS: &[&str] = &["DeleteMessage", "GetQueueUrl", "ReceiveMessage"];

/// The longest long poll SQS allows.
pub const MAX_WAIT: Duration = Duration::from_secs(20);

/// Which queue: a URL as given, or a name resolved with GetQueueUrl (Karpenter's setting is a
/// name, so both are accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueRef {
    /// `https://sqs.<region>.amazonaws.com/<account>/<name>`.
    Url(String),
    /// `<name>`, in the configured region and the caller's account.
    Name(String),
}

impl QueueRef {
    /// Checks the text once, at start-up.
    ///
    /// # Errors
    /// A message saying what a queue URL or name looks like.
    pub fn parse(text: &str) -> Result<QueueRef, String> {
        let t = text.trim();
        if t.starts_with("https://") || t.starts_with("http://") {
            let path = t.split("://").nth(1).and_then(|rest| rest.split_once('/'));
            match path {
                Some((host, path)) if !host.is_empty() && !path.trim_matches('/').is_empty() => {
                    Ok(QueueRef::Url(t.to_string()))
                }
                _ => Err(format!(
                    "{t:?} is not a queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)"
                )),
            }
        } else {
            let stem = t.strip_suffix(".fifo").unwrap_or(t);
            if !stem.is_empty()
                && t.len() <= 80
                && stem
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                Ok(QueueRef::Name(t.to_string()))
            } else {
                Err(format!(
                    "{t:?} is neither a queue URL nor a queue name (1-80 letters, digits, - and _)"
                ))
            }
        }
    }
}

impl std::fmt::Display for QueueRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueRef::Url(s) | QueueRef::Name(s) => f.write_str(s),
        }
    }
}

/// Everything the SQS source needs, built from flags by the caller (tests build it directly).
#[derive(Debug, Clone, PartialEq)]
pub struct SqsConfig {
    /// The queue EventBridge delivers to.
    pub queue: QueueRef,
    /// AWS region.
    pub region: String,
    /// Endpoint override (moto, VPC endpoints); `None` uses the SDK's resolution.
    pub endpoint: Option<String>,
    /// Long-poll wait per ReceiveMessage (at most [`MAX_WAIT`]).
    pub wait_time: Duration,
    /// Messages per ReceiveMessage (SQS allows 1–10).
    pub max_messages: i32,
    /// How long a received message stays hidden from other receives; one not deleted by then
    /// is delivered again.
    pub visibility_timeout: Duration,
    /// Messages received but not yet handed to `poll`; the receiver waits when it is full.
    pub buffer: usize,
    /// Timeout of one HTTP attempt beyond the long-poll wait.
    pub attempt_timeout: Duration,
    /// SDK attempts per call.
    pub max_attempts: u32,
    /// First back-off after a throttled or failed call (doubling, with jitter).
    pub initial_backoff: Duration,
    /// Longest back-off, and the retry interval after a configuration error.
    pub max_backoff: Duration,
}

impl SqsConfig {
    /// Defaults for a queue and region.
    pub fn new(queue: QueueRef, region: &str) -> SqsConfig {
        SqsConfig {
            queue,
            region: region.to_string(),
            endpoint: None,
            wait_time: MAX_WAIT,
            max_messages: 10,
            visibility_timeout: Duration::from_secs(30),
            buffer: 100,
            attempt_timeout: Duration::from_secs(10),
            max_attempts: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }

    /// Applies region, endpoint, retry and timeouts to an SDK config builder.
    pub fn apply(&self, builder: aws_sdk_sqs::config::Builder) -> aws_sdk_sqs::config::Builder {
        let attempt = self.wait_time.min(MAX_WAIT) + self.attempt_timeout;
        let mut b = builder
            .region(Region::new(self.region.clone()))
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(self.max_attempts.max(1))
                    .with_initial_backoff(self.initial_backoff),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(attempt)
                    .operation_timeout(attempt.saturating_mul(self.max_attempts.max(1)))
                    .connect_timeout(Duration::from_secs(5))
                    .build(),
            );
        if let Some(endpoint) = &self.endpoint {
            b = b.endpoint_url(endpoint);
        }
        b
    }
}

/// Classifies an SQS error code into the classes EC2 errors use.
pub fn classify_code(code: &str) -> ErrorClass {
    match code {
        "RequestThrottled"
        | "ThrottlingException"
        | "Throttling"
        | "KMS.ThrottlingException"
        | "OverLimit"
        | "TooManyRequestsException" => ErrorClass::Throttled,
        "ReceiptHandleIsInvalid" | "InvalidReceiptHandle" | "MessageNotInflight" => {
            ErrorClass::NotFound
        }
        "AWS.SimpleQueueService.NonExistentQueue"
        | "QueueDoesNotExist"
        | "AWS.SimpleQueueService.QueueDeletedRecently"
        | "QueueDeletedRecently"
        | "AWS.SimpleQueueService.UnsupportedOperation"
        | "UnsupportedOperation"
        | "AccessDenied"
        | "AccessDeniedException"
        | "InvalidAddress"
        | "InvalidSecurity"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "OptInRequired"
        | "RequestExpired" => ErrorClass::Config,
        c if c.starts_with("KMS.") => ErrorClass::Config,
        c if c.starts_with("Invalid") || c.starts_with("Missing") => ErrorClass::Config,
        _ => ErrorClass::Transient,
    }
}

/// A stable label for an error class.
fn class_label(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Throttled => "throttled",
        ErrorClass::Config => "config",
        ErrorClass::NotFound => "not_found",
        ErrorClass::Capacity | ErrorClass::Transient => "transient",
    }
}

/// The wait before the next call after `failures` consecutive failures of `class`: configuration
/// errors wait the longest back-off (a human must act; retrying fast only fills the log);
/// throttling and transient failures double from the initial back-off, with jitter in
/// [50%, 100%] so a restart of every replica does not retry in lockstep.
pub fn retry_delay(class: ErrorClass, failures: u32, config: &SqsConfig) -> Duration {
    if matches!(class, ErrorClass::Config | ErrorClass::NotFound) {
        return config.max_backoff;
    }
    let base = config
        .initial_backoff
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(config.max_backoff);
    let mut h = RandomState::new().build_hasher();
    h.write_u32(failures);
    let frac = (h.finish() % 1000) as f64 / 1000.0;
    base.mul_f64(0.5 + 0.5 * frac)
}

/// One message as received: its receipt (needed to delete it) and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// SQS's id, for the log.
    pub message_id: Option<String>,
    /// The handle DeleteMessage needs; `None` only from a broken server.
    pub receipt: Option<String>,
    /// The body, read.
    pub message: EventBridgeMessage,
}

/// The SQS calls, without tasks: resolve, receive, delete. Tests call it directly.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    config: SqsConfig,
}

impl SqsQueue {
    /// Connects with the SDK's default credential chain (env, IRSA web identity, instance role).
    pub async fn connect(config: SqsConfig) -> SqsQueue {
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .load()
            .await;
        let client = aws_sdk_sqs::Client::from_conf(
            config
                .apply(aws_sdk_sqs::config::Builder::from(&shared))
                .build(),
        );
        SqsQueue { client, config }
    }

    /// A client with static credentials and a private retry partition, for tests and moto.
    pub fn with_static_credentials(config: SqsConfig, partition: &str) -> SqsQueue {
        let conf = config
            .apply(aws_sdk_sqs::config::Builder::new().behavior_version(BehaviorVersion::latest()))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "testing", "testing", None, None, "static",
            ))
            .retry_partition(RetryPartition::new(partition.to_string()))
            .build();
        SqsQueue {
            client: aws_sdk_sqs::Client::from_conf(conf),
            config,
        }
    }

    /// The raw SDK client, for tests that set up queues and send messages.
    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.client
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &SqsConfig {
        &self.config
    }

    /// The queue URL: as configured, or looked up by name.
    ///
    /// # Errors
    /// `Config` when the queue does not exist or access is denied; `Throttled`; `Other`.
    pub async fn url(&self) -> Result<String, CloudError> {
        match &self.config.queue {
            QueueRef::Url(u) => Ok(u.clone()),
            QueueRef::Name(name) => {
                let out = self
                    .client
                    .get_queue_url()
                    .queue_name(name)
                    .send()
                    .await
                    .map_err(|e| self.error(classify_with(&e, classify_code), "get queue url"))?;
                out.queue_url().map(ToString::to_string).ok_or_else(|| {
                    CloudError::Other(format!("GetQueueUrl for {name:?} returned no URL"))
                })
            }
        }
    }

    /// One ReceiveMessage, waiting up to `wait` for a message, each body read.
    ///
    /// # Errors
    /// `Config` when the queue does not exist or access is denied (naming the queue);
    /// `Throttled`; `Other` for transient failures.
    pub async fn receive(&self, url: &str, wait: Duration) -> Result<Vec<Received>, CloudError> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(self.config.max_messages.clamp(1, 10))
            .wait_time_seconds(secs_i32(wait.min(MAX_WAIT)))
            .visibility_timeout(secs_i32(self.config.visibility_timeout))
            .send()
            .await
            .map_err(|e| {
                self.error(
                    classify_with(&e, classify_code),
                    "receive interruption messages",
                )
            })?;
        Ok(out
            .messages()
            .iter()
            .map(|m| Received {
                message_id: m.message_id().map(ToString::to_string),
                receipt: m.receipt_handle().map(ToString::to_string),
                message: read_eventbridge(m.body().unwrap_or_default()),
            })
            .collect())
    }

    /// Deletes messages by receipt handle, ten per DeleteMessageBatch. A handle SQS no longer
    /// knows (already deleted, or expired and re-received) counts as deleted.
    ///
    /// # Errors
    /// The first failed call, classified; entries that failed for other reasons are logged and
    /// left to reappear.
    pub async fn delete(&self, url: &str, receipts: &[String]) -> Result<usize, CloudError> {
        let mut deleted = 0;
        for chunk in receipts.chunks(10) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, r) in chunk.iter().enumerate() {
                match DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .build()
                {
                    Ok(e) => entries.push(e),
                    Err(e) => warn!(error = %e, "cannot build a delete entry"),
                }
            }
            let out = self
                .client
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    self.error(
                        classify_with(&e, classify_code),
                        "delete interruption messages",
                    )
                })?;
            deleted += out.successful().len();
            for f in out.failed() {
                if classify_code(f.code()) == ErrorClass::NotFound {
                    debug!(code = f.code(), "message already gone");
                    deleted += 1;
                } else {
                    warn!(
                        code = f.code(),
                        message = f.message().unwrap_or_default(),
                        "message not deleted; it will be delivered again"
                    );
                }
            }
        }
        Ok(deleted)
    }

    /// The `CloudError` for a classified failure; configuration errors name the queue and the
    /// flags that set it.
    fn error(&self, c: Classified, what: &str) -> CloudError {
        if c.class == ErrorClass::Config {
            let code = c.code.as_deref().unwrap_or("no code");
            CloudError::Config {
                reason: format!(
                    "{what}: queue {} in region {}: {code}: {} (check --interruption-queue, --region and the IAM policy)",
                    self.config.queue, self.config.region, c.message
                ),
            }
        } else {
            c.into_cloud_error(what)
        }
    }
}

fn secs_i32(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// The class of a `CloudError` this module made, for metrics and back-off.
fn class_of(e: &CloudError) -> ErrorClass {
    match e {
        CloudError::Throttled => ErrorClass::Throttled,
        CloudError::Config { .. } => ErrorClass::Config,
        CloudError::NotFound(_) => ErrorClass::NotFound,
        CloudError::InsufficientCapacity { .. } | CloudError::Other(_) => ErrorClass::Transient,
    }
}

/// Notices from one message, with what is needed to delete it once handed over.
#[derive(Debug)]
struct Delivery {
    url: Arc<str>,
    receipt: String,
    events: Vec<InterruptionEvent>,
}

/// Work for the deleter task.
#[derive(Debug)]
enum Ack {
    Delete { url: Arc<str>, receipt: String },
    Flush(oneshot::Sender<()>),
}

/// Room for receipt handles waiting to be deleted (a few receives' worth beyond the buffer).
const ACK_CAPACITY: usize = 1024;

/// Reads interruption notices from SQS in the background; see the module docs for why.
///
/// Dropping it stops its tasks (messages received but not handed over reappear later).
pub struct SqsInterruptions {
    deliveries: Mutex<mpsc::Receiver<Delivery>>,
    acks: mpsc::Sender<Ack>,
    ready: Arc<Notify>,
    cancel: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
}

impl std::fmt::Debug for SqsInterruptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsInterruptions").finish_non_exhaustive()
    }
}

impl SqsInterruptions {
    /// Starts the receiver and deleter tasks on the current tokio runtime.
    ///
    /// # Errors
    /// `Config` when called outside a tokio runtime.
    pub fn start(queue: SqsQueue, metrics: Arc<Metrics>) -> Result<SqsInterruptions, CloudError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|e| CloudError::Config {
            reason: format!("the SQS interruption source needs a tokio runtime: {e}"),
        })?;
        let (delivery_tx, delivery_rx) = mpsc::channel(queue.config.buffer.max(1));
        let (ack_tx, ack_rx) = mpsc::channel(ACK_CAPACITY);
        let ready = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let span = info_span!("sqs_interruptions", queue = %queue.config.queue);
        tasks.spawn_on(
            receive_loop(
                queue.clone(),
                delivery_tx,
                ack_tx.clone(),
                ready.clone(),
                metrics.clone(),
                cancel.clone(),
            )
            .instrument(span.clone()),
            &handle,
        );
        tasks.spawn_on(
            delete_loop(queue, ack_rx, metrics, cancel.clone()).instrument(span),
            &handle,
        );
        Ok(SqsInterruptions {
            deliveries: Mutex::new(delivery_rx),
            acks: ack_tx,
            ready,
            cancel,
            tasks: Mutex::new(tasks),
        })
    }

    /// Waits until the receiver has dealt with a non-empty receive since the last wait (or
    /// returns at once if it did meanwhile): its notices are ready for `poll`, its unusable
    /// messages are queued for deletion. For callers that react instead of ticking, and tests.
    pub async fn received(&self) {
        self.ready.notified().await;
    }

    /// Waits until every message handed over so far has been deleted (or `timeout` passed);
    /// `false` on timeout or when the deleter has stopped.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        let sent = tokio::time::timeout(timeout, self.acks.send(Ack::Flush(tx))).await;
        if !matches!(sent, Ok(Ok(()))) {
            return false;
        }
        matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())))
    }

    /// Deletes what was handed over (within `timeout`), then stops both tasks: called when this
    /// replica stops leading, so the next leader does not see handled notices again.
    pub async fn shutdown(&self, timeout: Duration) {
        if !self.flush(timeout).await {
            warn!(
                "interruption messages not all deleted before stopping; they will be delivered again"
            );
        }
        self.cancel.cancel();
        let tasks = self.tasks.lock().map(|mut t| std::mem::take(&mut *t));
        if let Ok(mut tasks) = tasks {
            let _ = tokio::time::timeout(timeout, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
        }
    }
}

impl Drop for SqsInterruptions {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[async_trait::async_trait]
impl InterruptionSource for SqsInterruptions {
    /// Drains what the receiver task has read; never waits on the network.
    async fn poll(&self) -> Vec<InterruptionEvent> {
        let mut events = Vec::new();
        let Ok(mut rx) = self.deliveries.lock() else {
            return events;
        };
        while let Ok(d) = rx.try_recv() {
            events.extend(d.events);
            let ack = Ack::Delete {
                url: d.url,
                receipt: d.receipt,
            };
            if self.acks.try_send(ack).is_err() {
                warn!("delete queue full or stopped; the message will be delivered again");
            }
        }
        events
    }
}

/// Sleeps for `d`; `true` when cancelled first.
async fn cancelled_during(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = cancel.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

fn count_error(metrics: &Metrics, operation: &'static str, class: ErrorClass) {
    metrics
        .interruption_queue_errors
        .get_or_create(&QueueErrorLabels {
            operation,
            class: class_label(class),
        })
        .inc();
}

/// Logs a failed call at the level its class deserves and returns how long to wait.
fn on_error(
    e: &CloudError,
    operation: &'static str,
    failures: u32,
    config: &SqsConfig,
    metrics: &Metrics,
) -> Duration {
    let class = class_of(e);
    count_error(metrics, operation, class);
    let delay = retry_delay(class, failures, config);
    match class {
        ErrorClass::Config | ErrorClass::NotFound => {
            error!(error = %e, retry_in = ?delay, "interruption queue unusable; spot warnings are not seen until this is fixed")
        }
        _ => warn!(error = %e, retry_in = ?delay, "interruption queue call failed; backing off"),
    }
    delay
}

/// Long-polls the queue into the delivery channel until cancelled.
async fn receive_loop(
    queue: SqsQueue,
    deliveries: mpsc::Sender<Delivery>,
    acks: mpsc::Sender<Ack>,
    ready: Arc<Notify>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let config = queue.config.clone();
    let mut failures = 0u32;
    let url: Arc<str> = loop {
        let r = tokio::select! {
            () = cancel.cancelled() => return,
            r = queue.url() => r,
        };
        match r {
            Ok(u) => break u.into(),
            Err(e) => {
                failures = failures.saturating_add(1);
                let d = on_error(&e, "get_queue_url", failures, &config, &metrics);
                if cancelled_during(&cancel, d).await {
                    return;
                }
            }
        }
    };
    info!(url = %url, wait = ?config.wait_time, "reading interruption notices");
    failures = 0;
    loop {
        let r = tokio::select! {
            () = cancel.cancelled() => return,
            r = queue.receive(&url, config.wait_time) => r,
        };
        let messages = match r {
            Ok(m) => {
                failures = 0;
                m
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let d = on_error(&e, "receive", failures, &config, &metrics);
                if cancelled_during(&cancel, d).await {
                    return;
                }
                continue;
            }
        };
        let any = !messages.is_empty();
        for m in messages {
            let (kind, result, events) = match m.message {
                EventBridgeMessage::Notices(events) => {
                    let kind = events.first().map_or("other", |e| e.kind.label());
                    let events: Vec<InterruptionEvent> =
                        events.into_iter().filter(|e| e.kind.actionable()).collect();
                    if events.is_empty() {
                        debug!(message.id = ?m.message_id, kind, "notice needs no action; deleting");
                        (kind, "ignored", events)
                    } else {
                        info!(message.id = ?m.message_id, kind, instances = ?events.iter().map(|e| e.instance_id.as_str()).collect::<Vec<_>>(), "interruption notice");
                        (kind, "delivered", events)
                    }
                }
                EventBridgeMessage::Ignored { detail_type } => {
                    debug!(message.id = ?m.message_id, detail_type = %detail_type, "not an interruption notice; deleting");
                    ("other", "ignored", Vec::new())
                }
                EventBridgeMessage::Malformed { reason } => {
                    warn!(message.id = ?m.message_id, reason, "malformed interruption message; deleting");
                    ("unknown", "malformed", Vec::new())
                }
            };
            metrics
                .interruption_messages
                .get_or_create(&InterruptionLabels { kind, result })
                .inc();
            let Some(receipt) = m.receipt else {
                warn!(message.id = ?m.message_id, "message without a receipt handle cannot be deleted");
                continue;
            };
            let url = url.clone();
            let sent = if events.is_empty() {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    r = acks.send(Ack::Delete { url, receipt }) => r.is_ok(),
                }
            } else {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    r = deliveries.send(Delivery { url, receipt, events }) => r.is_ok(),
                }
            };
            if !sent {
                return;
            }
        }
        if any {
            ready.notify_one();
        }
    }
}

/// Deletes handed-over and unusable messages, up to ten per call, until cancelled.
async fn delete_loop(
    queue: SqsQueue,
    mut acks: mpsc::Receiver<Ack>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            () = cancel.cancelled() => return,
            a = acks.recv() => match a {
                Some(a) => a,
                None => return,
            },
        };
        let mut pending = vec![first];
        while pending.len() < 10 {
            match acks.try_recv() {
                Ok(a) => pending.push(a),
                Err(_) => break,
            }
        }
        let mut by_url: Vec<(Arc<str>, Vec<String>)> = Vec::new();
        let mut flushes = Vec::new();
        for a in pending {
            match a {
                Ack::Delete { url, receipt } => match by_url.iter_mut().find(|(u, _)| *u == url) {
                    Some((_, r)) => r.push(receipt),
                    None => by_url.push((url, vec![receipt])),
                },
                Ack::Flush(tx) => flushes.push(tx),
            }
        }
        for (url, receipts) in by_url {
            if let Err(e) = queue.delete(&url, &receipts).await {
                let class = class_of(&e);
                count_error(&metrics, "delete", class);
                warn!(error = %e, messages = receipts.len(), "interruption messages not deleted; they will be delivered again");
            }
        }
        for tx in flushes {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls_and_names_parse() {
        assert_eq!(
            QueueRef::parse("https://sqs.us-east-1.amazonaws.com/123456789012/gantry"),
            Ok(QueueRef::Url(
                "https://sqs.us-east-1.amazonaws.com/123456789012/gantry".into()
            ))
        );
        assert_eq!(
            QueueRef::parse("Karpenter-my_cluster"),
            Ok(QueueRef::Name("Karpenter-my_cluster".into()))
        );
        assert_eq!(
            QueueRef::parse("events.fifo"),
            Ok(QueueRef::Name("events.fifo".into()))
        );
        for bad in [
            "",
            "https://",
            "https://host/",
            "has space",
            "a/b",
            &"x".repeat(81),
        ] {
            assert!(QueueRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn codes_classify_like_ec2() {
        for (code, class) in [
            (
                "AWS.SimpleQueueService.NonExistentQueue",
                ErrorClass::Config,
            ),
            ("QueueDoesNotExist", ErrorClass::Config),
            ("AccessDenied", ErrorClass::Config),
            ("KMS.AccessDeniedException", ErrorClass::Config),
            ("InvalidAddress", ErrorClass::Config),
            ("RequestThrottled", ErrorClass::Throttled),
            ("ThrottlingException", ErrorClass::Throttled),
            ("OverLimit", ErrorClass::Throttled),
            ("KMS.ThrottlingException", ErrorClass::Throttled),
            ("ReceiptHandleIsInvalid", ErrorClass::NotFound),
            ("InternalError", ErrorClass::Transient),
            ("ServiceUnavailable", ErrorClass::Transient),
        ] {
            assert_eq!(classify_code(code), class, "{code}");
        }
    }

    #[test]
    fn retry_delay_doubles_with_jitter_and_config_errors_wait_longest() {
        let c = SqsConfig::new(QueueRef::Name("q".into()), "us-east-1");
        for n in 1..=10 {
            let d = retry_delay(ErrorClass::Throttled, n, &c);
            let base = (c.initial_backoff * 2u32.pow(n - 1)).min(c.max_backoff);
            assert!(d >= base / 2 && d <= base, "{n}: {d:?} vs {base:?}");
        }
        assert_eq!(retry_delay(ErrorClass::Config, 1, &c), c.max_backoff);
        assert!(retry_delay(ErrorClass::Transient, 1, &c) <= c.initial_backoff);
    }
}
