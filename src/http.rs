//! The HTTP port (loopback by default):
//!
//! - `/metrics` (Prometheus text), `/healthz` (the process is up), `/readyz` (state open and
//!   partitions assigned);
//! - `GET /profiles/{id}`: the profile of a shopper by any of its identities (ECID, e-mail,
//!   customer id, profile key), from this worker's committed state: attributes, aggregates,
//!   memberships with since-when, recent audience changes. 404 for an unknown identity; 421
//!   naming the owning partition and group member when another worker holds it.
//! - `GET /profiles/{id}/explain?segment=ID`: segment ID's rule evaluated for the shopper now,
//!   node by node (each sub-expression as written, where, its value, and when the passing of
//!   time alone will next change it).
//! - `DELETE /profiles/{id}`: deletes everything held about the shopper, through the owner
//!   (202 once the request is durably on the repartition topic).
//!
//! `/profiles` requires `Authorization: Bearer <http.token>` when a token is configured.
//! Access lines name the route template, never the identity in the path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::identity::{self, Internal, Message, Position};
use crate::kafka_logs::ProducerLogs;
use crate::metrics::Metrics;
use crate::profile::{self, Profile};
use crate::segments::SegmentSet;
use crate::store::Store;

/// Shared with the worker: whether it is ready, and if not, why. Each processing thread has
/// its say ([`HealthPart`]); the worker is ready when none is unready and at least one holds
/// partitions (a thread the group gave nothing is idle, not unready).
pub struct Health {
    ready: AtomicBool,
    /// Per processing thread.
    parts: std::sync::Mutex<Vec<Part>>,
}

#[derive(Clone)]
enum Part {
    Ready,
    /// In the group, holding nothing (why).
    Idle(String),
    NotReady(String),
}

/// One processing thread's part of [`Health`].
#[derive(Clone)]
pub struct HealthPart {
    health: Arc<Health>,
    slot: usize,
}

impl HealthPart {
    /// `Ok`: this thread is ready; `Err(why)`: not ready, for that reason.
    pub fn set(&self, state: Result<(), String>) {
        self.health.set_part(
            self.slot,
            match state {
                Ok(()) => Part::Ready,
                Err(why) => Part::NotReady(why),
            },
        );
    }

    /// This thread holds no partitions (`why`): the worker is ready if another thread is.
    pub fn idle(&self, why: &str) {
        self.health.set_part(self.slot, Part::Idle(why.to_owned()));
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            ready: AtomicBool::new(false),
            parts: std::sync::Mutex::new(vec![Part::NotReady("starting".into())]),
        }
    }

    /// The parts of `n` processing threads, each "starting" until it says otherwise.
    pub fn parts(self: &Arc<Self>, n: usize) -> Vec<HealthPart> {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.resize(n.max(1), Part::NotReady("starting".into()));
        self.ready.store(false, Ordering::Relaxed);
        (0..n.max(1))
            .map(|slot| HealthPart {
                health: self.clone(),
                slot,
            })
            .collect()
    }

    fn set_part(&self, slot: usize, state: Part) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        if parts.len() <= slot {
            parts.resize(slot + 1, Part::NotReady("starting".into()));
        }
        parts[slot] = state;
        let ready = parts.iter().all(|p| !matches!(p, Part::NotReady(_)))
            && parts.iter().any(|p| matches!(p, Part::Ready));
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Why the worker is not ready (empty when it is).
    pub fn reason(&self) -> String {
        if self.is_ready() {
            return String::new();
        }
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        let why = |p: &Part| match p {
            Part::Ready => None,
            Part::Idle(why) | Part::NotReady(why) => Some(why.clone()),
        };
        if parts.len() == 1 {
            return why(&parts[0]).unwrap_or_default();
        }
        // Unready threads say why; if none is, every thread is idle.
        let unready: Vec<String> = parts
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p, Part::NotReady(_)))
            .filter_map(|(i, p)| Some(format!("thread {i}: {}", why(p)?)))
            .collect();
        if unready.is_empty() {
            return parts.iter().find_map(why).unwrap_or_default();
        }
        unready.join("; ")
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

/// What the worker hands the profile endpoints once its state is open.
pub struct Attached {
    pub store: Arc<Store>,
    pub partitions: i32,
    pub producer: FutureProducer<ProducerLogs>,
    pub repartition: String,
    pub group: String,
    /// For describing the consumer group (who owns a partition).
    pub kafka: ClientConfig,
}

/// The profile endpoints' view of the worker.
pub struct Api {
    token: Option<String>,
    attached: OnceLock<Attached>,
    assigned: RwLock<Vec<i32>>,
    /// Per processing thread: the partition numbers it holds.
    assigned_parts: std::sync::Mutex<Vec<Vec<i32>>>,
    describer: OnceLock<Option<BaseConsumer>>,
    /// The definitions in force (explanations).
    segments: RwLock<Option<Arc<SegmentSet>>>,
}

impl Api {
    pub fn new(token: Option<String>) -> Api {
        Api {
            token: token.filter(|t| !t.is_empty()),
            attached: OnceLock::new(),
            assigned: RwLock::new(Vec::new()),
            assigned_parts: std::sync::Mutex::new(Vec::new()),
            describer: OnceLock::new(),
            segments: RwLock::new(None),
        }
    }

    /// The definitions in force (at start and after each reload).
    pub fn set_segments(&self, set: Arc<SegmentSet>) {
        *self.segments.write().expect("not poisoned") = Some(set);
    }

    pub fn attach(&self, a: Attached) {
        let _ = self.attached.set(a);
    }

    /// The partition numbers processing thread `slot` holds (called after each rebalance check).
    pub fn set_assigned(&self, slot: usize, assigned: &[(String, i32)]) {
        let mut parts = self
            .assigned_parts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if parts.len() <= slot {
            parts.resize(slot + 1, Vec::new());
        }
        parts[slot] = assigned.iter().map(|(_, p)| *p).collect();
        let mut numbers: Vec<i32> = parts.iter().flatten().copied().collect();
        numbers.sort_unstable();
        numbers.dedup();
        if *self.assigned.read().expect("not poisoned") != numbers {
            *self.assigned.write().expect("not poisoned") = numbers;
        }
    }

    fn holds(&self, partition: i32) -> bool {
        self.assigned
            .read()
            .expect("not poisoned")
            .contains(&partition)
    }

    fn authorised(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        // The scheme is case-insensitive (RFC 9110, 11.1).
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, t)| t.trim_start());
        // Constant time in the token's length.
        given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// The group member that owns partition number `partition` (the group assigns the
    /// repartition topic; its members read the same numbers of the inputs), if the broker says.
    fn owner(&self, a: &Attached, partition: i32) -> serde_json::Value {
        let describer = self
            .describer
            .get_or_init(|| a.kafka.clone().create::<BaseConsumer>().ok());
        let Some(client) = describer else {
            warn!("cannot create a client to describe the consumer group");
            return serde_json::Value::Null;
        };
        let groups = match client.fetch_group_list(Some(&a.group), Duration::from_secs(5)) {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "cannot describe the consumer group");
                return serde_json::Value::Null;
            }
        };
        for g in groups.groups() {
            for m in g.members() {
                let owns = m
                    .assignment()
                    .and_then(parse_assignment)
                    .is_some_and(|topics| {
                        topics.iter().any(|(_, parts)| parts.contains(&partition))
                    });
                if owns {
                    return serde_json::json!({
                        "member_id": m.id(),
                        "client_id": m.client_id(),
                        "host": m.client_host(),
                    });
                }
            }
        }
        debug!(partition, "no group member reported for the partition");
        serde_json::Value::Null
    }
}

/// Decodes a consumer-protocol assignment: version, [(topic, [partition])], user data.
fn parse_assignment(b: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    let mut at = 2; // version (i16)
    let i32_at = |at: &mut usize| -> Option<i32> {
        let v = i32::from_be_bytes(b.get(*at..*at + 4)?.try_into().ok()?);
        *at += 4;
        Some(v)
    };
    let topics = i32_at(&mut at)?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = i16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize;
        at += 2;
        let name = String::from_utf8_lossy(b.get(at..at + len)?).into_owned();
        at += len;
        let n = i32_at(&mut at)?;
        let mut parts = Vec::new();
        for _ in 0..n.max(0) {
            parts.push(i32_at(&mut at)?);
        }
        out.push((name, parts));
    }
    Some(out)
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    api: Arc<Api>,
    /// Host names accepted in `Host` (bound to loopback), or any.
    hosts: Option<Arc<Vec<String>>>,
}

/// Refuses a request naming another host than the loopback server's (DNS rebinding).
async fn check_host(
    State(s): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(allowed) = &s.hosts {
        let host = request
            .headers()
            .get(axum::http::header::HOST)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        if !host_allowed(host, allowed) {
            s.metrics
                .http_requests
                .with_label_values(&["host_refused", "421"])
                .inc();
            return json(
                StatusCode::MISDIRECTED_REQUEST,
                serde_json::json!({"error": "this server answers only to its loopback names (add the name to http.hosts)"}),
            );
        }
    }
    next.run(request).await
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

/// Counts and logs a request by its route template (never its path: it holds an identity).
fn finish(s: &AppState, route: &str, started: Instant, response: Response) -> Response {
    let status = response.status().as_u16();
    s.metrics
        .http_requests
        .with_label_values(&[route, &status.to_string()])
        .inc();
    let secs = started.elapsed().as_secs_f64();
    s.metrics
        .http_seconds
        .with_label_values(&[route])
        .observe(secs);
    // The metrics count every request; a line each only when debugging.
    debug!(route, status, micros = (secs * 1e6) as u64, "http request");
    response
}

/// The `/profiles` token: `TAILOR_HTTP_TOKEN` when set, else `http.token`. An empty variable is
/// an error: it must not silently switch off the token of the configuration file.
pub fn resolve_token(env: Option<&str>, config: Option<&str>) -> Result<Option<String>, String> {
    match env {
        Some(t) if t.trim().is_empty() => Err(
            "TAILOR_HTTP_TOKEN is set but empty: unset it (to use http.token) or give a token"
                .into(),
        ),
        Some(t) => Ok(Some(t.to_owned())),
        None => Ok(config.map(str::to_owned)),
    }
}

/// The host names a request may name when the server is bound to a loopback address (`None`:
/// any, when it is not).
pub fn allowed_hosts(addr: &SocketAddr, extra: &[String]) -> Option<Vec<String>> {
    addr.ip().is_loopback().then(|| {
        ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|h| h.to_string())
            .chain(extra.iter().map(|h| h.to_ascii_lowercase()))
            .collect()
    })
}

/// Whether a `Host` header (name, optional port; IPv6 in brackets) names an allowed host.
fn host_allowed(header: Option<&str>, allowed: &[String]) -> bool {
    let Some(h) = header else {
        return true; // HTTP/1.0 clients; browsers always send one
    };
    let name = match h.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => h.rsplit_once(':').map_or(h, |(n, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                n
            } else {
                h
            }
        }),
    };
    allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// The profile of `id` as JSON, or why not.
fn lookup(api: &Api, id: &str) -> Response {
    match find(api, id) {
        Ok((_, key, partition, p)) => json(StatusCode::OK, render(&key, partition, &p)),
        Err(response) => response,
    }
}

/// Segment `segment`'s rule evaluated for the shopper `id`, or why not.
fn explain(api: &Api, id: &str, segment: &str) -> Response {
    let set = api.segments.read().expect("not poisoned").clone();
    let Some(set) = set else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "the worker is starting"}),
        );
    };
    let (a, key, partition, p) = match find(api, id) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let clock = match a.store.clock(partition) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "profile lookup failed");
            return json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": "state store error"}),
            );
        }
    };
    match explain_doc(&set, &key, partition, &p, segment, stream_now(clock, &p)) {
        Ok(doc) => json(StatusCode::OK, doc),
        Err(e) => json(StatusCode::NOT_FOUND, serde_json::json!({ "error": e })),
    }
}

/// "Now" for an explanation: the partition's committed stream clock, or the shopper's latest
/// event if later (the clock is wall time once the worker has caught up).
pub fn stream_now(clock: Option<i64>, p: &Profile) -> i64 {
    clock
        .into_iter()
        .chain(p.last_seen)
        .max()
        .unwrap_or_else(wall_ms)
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The explanation document (HTTP and `tailor explain`): the segment, whether the shopper is a
/// member, the rule's evaluation tree at `now`, and when time alone will next change the result.
pub fn explain_doc(
    set: &SegmentSet,
    key: &str,
    partition: i32,
    p: &Profile,
    segment: &str,
    now: i64,
) -> Result<serde_json::Value, String> {
    let Some(index) = set.index_of(segment) else {
        let mut known: Vec<&str> = set.segments().iter().map(|s| s.id.as_str()).collect();
        known.sort_unstable();
        return Err(format!(
            "no segment '{segment}' in the definitions in force; known: {}",
            known.join(", ")
        ));
    };
    let seg = &set.segments()[index];
    let tree = set
        .explain(index, p, now)
        .ok_or_else(|| format!("segment '{segment}' cannot be explained"))?;
    let membership = p.segments.iter().find(|m| m.segment == segment);
    Ok(serde_json::json!({
        "profile_key": key,
        "partition": partition,
        "segment": segment,
        "name": seg.name,
        "rule": seg.rule_text(),
        "evaluated_at": now,
        "result": tree.value,
        "member": membership.is_some(),
        "member_since": membership.map(|m| m.since),
        "next_change": tree.changes_at,
        "tree": tree,
    }))
}

/// The shopper `id` (by any identity) on this worker: (attachment, key, partition, profile), or
/// the answer that says why not.
#[allow(clippy::result_large_err)] // the error is the answer itself, built once per request
fn find<'a>(api: &'a Api, id: &str) -> Result<(&'a Attached, String, i32, Profile), Response> {
    let Some(a) = api.attached.get() else {
        return Err(json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "the worker is starting"}),
        ));
    };
    let misdirected = |partition: i32| {
        json(
            StatusCode::MISDIRECTED_REQUEST,
            serde_json::json!({
                "error": "another worker holds this profile",
                "partition": partition,
                "owner": api.owner(a, partition),
            }),
        )
    };
    let store_error = |e: crate::store::StoreError| {
        warn!(error = %e, "profile lookup failed");
        json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"error": "state store error"}),
        )
    };
    // E-mails are kept trimmed and lower-cased: a lookup by the address as a shopper typed it
    // finds them too.
    let normalised = id
        .contains('@')
        .then(|| crate::event::normalise_email(id))
        .flatten();
    let id = normalised.as_deref().unwrap_or(id);
    let mut partition = identity::partition_for(id.as_bytes(), a.partitions);
    if !api.holds(partition) {
        return Err(misdirected(partition));
    }
    let mut key = id.to_owned();
    if let Some(owner) = a.store.alias(partition, id).map_err(store_error)? {
        partition = identity::partition_for(owner.as_bytes(), a.partitions);
        if !api.holds(partition) {
            return Err(misdirected(partition));
        }
        key = owner;
    }
    match a.store.profile(partition, &key).map_err(store_error)? {
        Some(p) => Ok((a, key, partition, p)),
        None => Err(json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no profile for this identity"}),
        )),
    }
}

/// The lookup document: the profile summary, its key, memberships and recent changes.
pub fn render(key: &str, partition: i32, p: &Profile) -> serde_json::Value {
    let mut doc = profile::summary(p);
    let obj = doc.as_object_mut().expect("summary is an object");
    obj.insert("profile_key".into(), key.into());
    obj.insert("partition".into(), partition.into());
    obj.insert(
        "recent_changes".into(),
        serde_json::to_value(&p.recent_changes).expect("serialisable"),
    );
    doc
}

/// The 401 answer, unless the request carries the token (or none is configured).
fn unauthorised(api: &Api, headers: &HeaderMap) -> Option<Response> {
    (!api.authorised(headers)).then(|| {
        json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "missing or wrong bearer token"}),
        )
    })
}

async fn get_profile(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let response = match unauthorised(&s.api, &headers) {
        Some(denied) => denied,
        None => {
            let api = s.api.clone();
            // Reading RocksDB (and, for a 421, asking the broker) blocks.
            tokio::task::spawn_blocking(move || lookup(&api, &id))
                .await
                .unwrap_or_else(|_| json(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({})))
        }
    };
    finish(&s, "/profiles/{id}", started, response)
}

/// The `segment` parameter of a query string (segment ids need no percent-decoding).
fn segment_param(uri: &Uri) -> Option<String> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("segment="))
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

async fn get_explain(
    State(s): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let response = match (unauthorised(&s.api, &headers), segment_param(&uri)) {
        (Some(denied), _) => denied,
        (None, None) => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "name the segment: ?segment=ID"}),
        ),
        (None, Some(segment)) => {
            let api = s.api.clone();
            tokio::task::spawn_blocking(move || explain(&api, &id, &segment))
                .await
                .unwrap_or_else(|_| json(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({})))
        }
    };
    finish(&s, "/profiles/{id}/explain", started, response)
}

async fn delete_profile(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let response = match unauthorised(&s.api, &headers) {
        Some(denied) => denied,
        None => request_deletion(&s.api, id).await,
    };
    finish(&s, "DELETE /profiles/{id}", started, response)
}

/// Puts a delete request for `id` on the repartition topic, to the partition that owns `id`.
async fn request_deletion(api: &Api, id: String) -> Response {
    let Some(a) = api.attached.get() else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "the worker is starting"}),
        );
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let partition = identity::partition_for(id.as_bytes(), a.partitions);
    let payload = identity::encode(&Internal {
        target: id.clone(),
        via: Position {
            topic: "admin".into(),
            partition: -1,
            offset: now,
        },
        message: Message::Delete {
            source: "admin".into(),
            requested_at: now,
        },
    });
    let record = FutureRecord::to(&a.repartition)
        .key(id.as_bytes())
        .payload(&payload)
        .partition(partition);
    match a.producer.send(record, Duration::from_secs(10)).await {
        Ok(_) => json(
            StatusCode::ACCEPTED,
            serde_json::json!({"status": "deletion requested", "partition": partition}),
        ),
        Err((e, _)) => {
            warn!(error = %e, "could not request a deletion");
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "could not reach the broker; try again"}),
            )
        }
    }
}

async fn render_metrics(State(s): State<AppState>) -> impl IntoResponse {
    // RocksDB's backlog and write stall, read now: a processing thread blocked in a stopped
    // write could not report the stop itself (the reads do not wait for the writers).
    if let Some(a) = s.api.attached.get() {
        s.metrics.set_compaction(&a.store.compaction());
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    if s.health.is_ready() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", s.health.reason()),
        )
    }
}

/// Binds the port (so a busy port fails start-up) and returns the server future.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    api: Arc<Api>,
    hosts: &[String],
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = TcpListener::bind(addr).await?;
    if !addr.ip().is_loopback() && api.token.is_none() {
        warn!(%addr, "the HTTP port is reachable from other hosts and /profiles has no token: set http.token or TAILOR_HTTP_TOKEN");
    }
    debug!(%addr, "http listening");
    let state = AppState {
        metrics,
        health,
        api,
        hosts: allowed_hosts(&addr, hosts).map(Arc::new),
    };
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/profiles/{id}", get(get_profile).delete(delete_profile))
        .route("/profiles/{id}/explain", get(get_explain))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_host,
        ))
        .with_state(state);
    Ok(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_is_ready_when_no_thread_is_unready_and_one_holds_partitions() {
        let health = Arc::new(Health::new());
        let parts = health.parts(2);
        assert!(!health.is_ready());
        assert_eq!(health.reason(), "thread 0: starting; thread 1: starting");
        parts[0].set(Ok(()));
        assert!(!health.is_ready(), "thread 1 has not joined yet");
        parts[1].idle("no partitions assigned yet");
        assert!(
            health.is_ready(),
            "an idle thread does not hold the worker back"
        );
        assert_eq!(health.reason(), "");
        parts[0].idle("no partitions assigned yet");
        assert!(!health.is_ready(), "nobody holds a partition");
        assert_eq!(health.reason(), "no partitions assigned yet");
        parts[0].set(Ok(()));
        parts[1].set(Err("restoring partitions 2 from the changelog".into()));
        assert!(!health.is_ready());
        assert_eq!(
            health.reason(),
            "thread 1: restoring partitions 2 from the changelog"
        );
    }

    #[test]
    fn consumer_protocol_assignments_are_decoded() {
        let mut b = Vec::new();
        b.extend_from_slice(&1i16.to_be_bytes()); // version
        b.extend_from_slice(&2i32.to_be_bytes()); // topics
        for (topic, parts) in [("in.a", vec![0i32, 3]), ("tailor.repartition", vec![3])] {
            b.extend_from_slice(&(topic.len() as i16).to_be_bytes());
            b.extend_from_slice(topic.as_bytes());
            b.extend_from_slice(&(parts.len() as i32).to_be_bytes());
            for p in parts {
                b.extend_from_slice(&p.to_be_bytes());
            }
        }
        b.extend_from_slice(&(-1i32).to_be_bytes()); // no user data
        assert_eq!(
            parse_assignment(&b),
            Some(vec![
                ("in.a".to_string(), vec![0, 3]),
                ("tailor.repartition".to_string(), vec![3])
            ])
        );
        assert_eq!(parse_assignment(&b[..9]), None, "truncated");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let api = Api::new(Some("s3cret".into()));
        for header in ["bearer s3cret", "BEARER s3cret", "Bearer  s3cret"] {
            let mut h = HeaderMap::new();
            h.insert("authorization", header.parse().unwrap());
            assert!(api.authorised(&h), "{header}");
        }
        let mut h = HeaderMap::new();
        h.insert("authorization", "Basic s3cret".parse().unwrap());
        assert!(!api.authorised(&h));
    }

    /// Regression: an empty `TAILOR_HTTP_TOKEN=""` switched off the token of the config file.
    #[test]
    fn an_empty_token_variable_is_an_error_not_no_token() {
        assert!(resolve_token(Some(""), Some("s3cret")).is_err());
        assert!(resolve_token(Some("  "), None).is_err());
        assert_eq!(
            resolve_token(Some("env"), Some("file")),
            Ok(Some("env".into()))
        );
        assert_eq!(resolve_token(None, Some("file")), Ok(Some("file".into())));
        assert_eq!(resolve_token(None, None), Ok(None));
    }

    #[test]
    fn on_loopback_only_loopback_names_and_configured_hosts_are_answered() {
        let loopback: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let allowed = allowed_hosts(&loopback, &["Tailor.internal".into()]).unwrap();
        for ok in [
            "localhost:9464",
            "127.0.0.1:9464",
            "127.0.0.1",
            "[::1]:9464",
            "LOCALHOST",
            "tailor.internal:80",
        ] {
            assert!(host_allowed(Some(ok), &allowed), "{ok}");
        }
        for refused in ["evil.example:9464", "evil.example", "127.0.0.2:9464", ""] {
            assert!(!host_allowed(Some(refused), &allowed), "{refused}");
        }
        assert!(host_allowed(None, &allowed), "HTTP/1.0 without Host");
        let any: SocketAddr = "0.0.0.0:9464".parse().unwrap();
        assert_eq!(allowed_hosts(&any, &[]), None, "not loopback: any host");
    }

    #[test]
    fn the_token_is_required_when_set() {
        let api = Api::new(Some("s3cret".into()));
        let mut h = HeaderMap::new();
        assert!(!api.authorised(&h));
        h.insert("authorization", "Bearer wrong!".parse().unwrap());
        assert!(!api.authorised(&h));
        h.insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(api.authorised(&h));
        assert!(Api::new(None).authorised(&HeaderMap::new()));
    }
}
