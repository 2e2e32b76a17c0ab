//! The routes and their handlers. Every error is a JSON [`ErrorBody`] with a 4xx or 5xx status;
//! nothing here panics on a request.
#![allow(
    clippy::result_large_err,
    reason = "the error is the finished response, made once per request and returned at once"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use quorate_health_api::HealthStatus;
use quorate_membership_api::{MemberState, SplitBrainStatus};
use quorate_startup::NodeContext;
use quorate_startup::admin::{Admin, AdminError, AdminRequest, Permission, Principal};
use quorate_types::{RoleName, Secret};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ApiSettings;
use crate::metrics::{AdminLabel, Metrics};
use crate::model::{
    AdminReply, CheckEntry, ClusterBody, CoordinationView, ErrorBody, HealthBody, LEASE_HEADER,
    MaintenanceBody, MemberView, MoveBody, PostponeBody, ProbeBody, RoleBody, TOKEN_HEADER,
};
use crate::tracker::Tracker;

/// The longest a maintenance pause may last.
const PAUSE_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// The pause when the body names none.
const PAUSE_DEFAULT: Duration = Duration::from_secs(3600);
/// The longest a state endpoint waits for one store read or the policy's explanation.
const READ_WAIT: Duration = Duration::from_millis(500);
/// The longest an admin call waits for its chosen node to be seen as primary before it
/// answers 202.
const CONFIRM_WAIT_MAX: Duration = Duration::from_secs(10);

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) ctx: NodeContext,
    pub(crate) admin: Admin,
    pub(crate) settings: Arc<ApiSettings>,
    pub(crate) tracker: Arc<Tracker>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) sse: Arc<Semaphore>,
    pub(crate) cancel: CancellationToken,
}

impl AppState {
    pub(crate) fn new(
        ctx: NodeContext,
        settings: ApiSettings,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
    ) -> AppState {
        let metrics = Arc::new(Metrics::new());
        let tracker = Tracker::start(ctx.clone(), Arc::clone(&metrics), tasks, cancel);
        AppState {
            admin: Admin::new(ctx.clone()),
            sse: Arc::new(Semaphore::new(settings.sse_clients_max)),
            settings: Arc::new(settings),
            tracker,
            metrics,
            ctx,
            cancel: cancel.clone(),
        }
    }

    fn role_ttl(&self, role: &RoleName) -> Duration {
        let wan = self.ctx.config.profile.is_wan();
        self.ctx
            .config
            .raw
            .roles
            .iter()
            .zip(&self.ctx.config.roles)
            .find(|(_, r)| *r == role)
            .map_or(Duration::from_secs(1), |(s, _)| {
                s.role_config(wan).lease.ttl
            })
    }
}

/// The router with every route.
pub(crate) fn router(state: AppState) -> Router {
    let limit = state.settings.body_bytes_max;
    Router::new()
        .route("/", get(crate::dashboard::page))
        .route("/events", get(crate::dashboard::events))
        .route("/role/{role}/primary", get(primary).options(primary))
        .route("/role/{role}/leader", get(primary).options(primary))
        .route("/role/{role}/replica", get(replica).options(replica))
        .route("/role/{role}/read-only", get(read_only).options(read_only))
        .route("/primary", get(primary_alias).options(primary_alias))
        .route("/leader", get(primary_alias).options(primary_alias))
        .route("/replica", get(replica_alias).options(replica_alias))
        .route("/read-only", get(read_only_alias).options(read_only_alias))
        .route("/health", get(health).options(health))
        .route("/liveness", get(liveness).options(liveness))
        .route("/readiness", get(readiness).options(readiness))
        .route("/cluster", get(cluster))
        .route("/roles", get(roles))
        .route("/roles/{role}", get(one_role))
        .route("/history", get(history))
        .route("/config", get(config))
        .route("/metrics", get(metrics))
        .route("/role/{role}/switchover", post(switchover))
        .route("/role/{role}/failover", post(failover))
        .route("/role/{role}/failback", post(failback))
        .route("/role/{role}/failback/postpone", post(postpone_failback))
        .route("/role/{role}/cancel", post(cancel))
        .route("/role/{role}/maintenance", post(maintenance))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Responses.

/// An error response.
pub(crate) fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        status: status.as_u16(),
        error: kind.to_owned(),
        message: message.into(),
    };
    (status, axum::Json(body)).into_response()
}

fn admin_error(e: &AdminError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match e {
        AdminError::Forbidden { .. } => "forbidden",
        AdminError::BadRequest { .. } => "bad_request",
        AdminError::UnknownRole { .. } => "unknown_role",
        AdminError::Refused { .. } => "refused",
        AdminError::Unavailable { .. } => "unavailable",
    };
    error(status, kind, e.to_string())
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

/// A probe answer: JSON on GET, empty on HEAD (axum strips the body) and OPTIONS.
fn probe(method: &Method, status: StatusCode, headers: HeaderMap, body: &ProbeBody) -> Response {
    let mut r = if method == Method::OPTIONS {
        (status, Body::empty()).into_response()
    } else {
        json(status, body)
    };
    r.headers_mut().extend(headers);
    r
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no endpoint {}: see docs/api.md (probes under /role/{{role}}/..., state at /cluster, /roles, /history)",
            uri.path()
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Authentication.

/// Constant-time comparison (the length may leak; the content does not).
fn same(a: &str, b: &Secret) -> bool {
    let (a, b) = (a.as_bytes(), b.expose().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The caller, from `Authorization: Bearer TOKEN`; 401 without a valid token.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, Response> {
    let s = &state.settings;
    if !s.auth {
        return Ok(Principal::new(
            "http:anonymous (auth off, loopback)",
            Permission::Operate,
        ));
    }
    let unauthorized = |msg: &str| {
        let mut r = error(StatusCode::UNAUTHORIZED, "unauthenticated", msg);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"quorate\""),
        );
        r
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "this endpoint needs `Authorization: Bearer TOKEN` (the token is in [api] token_file)",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if s.token.as_ref().is_some_and(|t| same(token, t)) {
        return Ok(Principal::new("http:token operate", Permission::Operate));
    }
    if s.read_token.as_ref().is_some_and(|t| same(token, t)) {
        return Ok(Principal::new("http:token read-only", Permission::Read));
    }
    Err(unauthorized(
        "the bearer token is not valid for this node (compare with [api] token_file)",
    ))
}

// ---------------------------------------------------------------------------------------------
// Probes.

struct RoleView {
    body: ProbeBody,
    acting: bool,
    healthy: bool,
}

fn role_view(state: &AppState, role: &RoleName) -> RoleView {
    let ctx = &state.ctx;
    let status = ctx
        .failover
        .status(role)
        .map(|s| s.borrow().clone())
        .unwrap_or_default();
    let primary = ctx
        .failover
        .primary(role)
        .ok()
        .and_then(|p| p.borrow().clone())
        .filter(|p| p.is_valid());
    let h = ctx.health.snapshot();
    let m = ctx.membership.snapshot();
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let acting = primary.is_some();
    RoleView {
        body: ProbeBody {
            role: role.to_string(),
            node: ctx.config.node_id.to_string(),
            state: if acting { "primary" } else { "replica" }.to_owned(),
            primary: status.primary.as_ref().map(ToString::to_string),
            token: primary.as_ref().map(|p| p.token().0),
            lease_remaining_ms: primary
                .as_ref()
                .map(|p| ms(p.valid_until().saturating_sub(p.now()))),
            health: h.status.as_str().to_owned(),
            has_majority: m.quorum.has_majority,
            reason: None,
        },
        acting,
        healthy: h.status != HealthStatus::Critical,
    }
}

fn known_role(state: &AppState, role: &str) -> Result<RoleName, Response> {
    state.admin.role(role).map_err(|e| admin_error(&e))
}

fn the_only_role(state: &AppState) -> Result<RoleName, Response> {
    let roles = state.admin.roles();
    match roles.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(error(
            StatusCode::NOT_FOUND,
            "unknown_role",
            "this node manages no role: add a [[role]] section",
        )),
        many => Err(error(
            StatusCode::NOT_FOUND,
            "unknown_role",
            format!(
                "this node manages {} roles ({}): use /role/{{role}}/... to name one",
                many.len(),
                many.iter()
                    .map(RoleName::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn primary_probe(state: &AppState, method: &Method, role: &RoleName) -> Response {
    let mut v = role_view(state, role);
    let mut headers = HeaderMap::new();
    let status = if v.acting {
        if let Some(t) = v.body.token {
            headers.insert(TOKEN_HEADER, HeaderValue::from(t));
        }
        if let Some(l) = v.body.lease_remaining_ms {
            headers.insert(LEASE_HEADER, HeaderValue::from(l));
        }
        StatusCode::OK
    } else {
        v.body.reason = Some(match &v.body.primary {
            Some(p) => format!("not the primary of {role}: {p} is"),
            None => format!("not the primary of {role}: it has no primary now"),
        });
        StatusCode::SERVICE_UNAVAILABLE
    };
    probe(method, status, headers, &v.body)
}

#[derive(serde::Deserialize)]
struct LagQuery {
    lag: Option<String>,
}

/// Parses Patroni's `lag` (bytes, or a number with a unit: `16kB`, `1MB`) to a number.
fn parse_lag(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1024,
        "mb" => 1024 * 1024,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mul)
}

async fn replica_probe(
    state: &AppState,
    method: &Method,
    role: &RoleName,
    lag: Option<&str>,
) -> Response {
    let max_lag = match lag.map(|l| (l, parse_lag(l))) {
        None => None,
        Some((_, Some(n))) => Some(n),
        Some((l, None)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("lag={l:?} is not a size: give bytes, or a number with kB, MB or GB"),
            );
        }
    };
    let mut v = role_view(state, role);
    let mut reason = None;
    if v.acting {
        reason = Some(format!("this node is the primary of {role}"));
    } else if !v.healthy {
        reason = Some(format!("this node's health is {}", v.body.health));
    } else if let Some(max) = max_lag {
        // The lag as the policy sees it (only when the role has a lag source).
        let me = state.ctx.config.node_id.to_string();
        if let Ok(Ok(e)) = tokio::time::timeout(READ_WAIT, state.admin.explain(role.as_str())).await
            && let Some(lag) = e.nodes.iter().find(|n| n.node == me).and_then(|n| n.lag)
            && lag > max
        {
            reason = Some(format!("replication lag {lag} is above lag={max}"));
        }
    }
    let status = if reason.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    v.body.reason = reason;
    probe(method, status, HeaderMap::new(), &v.body)
}

fn read_only_probe(state: &AppState, method: &Method, role: &RoleName) -> Response {
    let mut v = role_view(state, role);
    let ok = v.acting || v.healthy;
    if !ok {
        v.body.reason = Some(format!("this node's health is {}", v.body.health));
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    probe(method, status, HeaderMap::new(), &v.body)
}

async fn primary(State(s): State<AppState>, method: Method, Path(role): Path<String>) -> Response {
    match known_role(&s, &role) {
        Ok(r) => primary_probe(&s, &method, &r),
        Err(e) => e,
    }
}

async fn replica(
    State(s): State<AppState>,
    method: Method,
    Path(role): Path<String>,
    q: Result<Query<LagQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let lag = q.ok().and_then(|Query(q)| q.lag);
    match known_role(&s, &role) {
        Ok(r) => replica_probe(&s, &method, &r, lag.as_deref()).await,
        Err(e) => e,
    }
}

async fn read_only(
    State(s): State<AppState>,
    method: Method,
    Path(role): Path<String>,
) -> Response {
    match known_role(&s, &role) {
        Ok(r) => read_only_probe(&s, &method, &r),
        Err(e) => e,
    }
}

async fn primary_alias(State(s): State<AppState>, method: Method) -> Response {
    match the_only_role(&s) {
        Ok(r) => primary_probe(&s, &method, &r),
        Err(e) => e,
    }
}

async fn replica_alias(
    State(s): State<AppState>,
    method: Method,
    q: Result<Query<LagQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let lag = q.ok().and_then(|Query(q)| q.lag);
    match the_only_role(&s) {
        Ok(r) => replica_probe(&s, &method, &r, lag.as_deref()).await,
        Err(e) => e,
    }
}

async fn read_only_alias(State(s): State<AppState>, method: Method) -> Response {
    match the_only_role(&s) {
        Ok(r) => read_only_probe(&s, &method, &r),
        Err(e) => e,
    }
}

fn draft_status(s: HealthStatus) -> &'static str {
    match s {
        HealthStatus::Passing => "pass",
        HealthStatus::Warning => "warn",
        HealthStatus::Unknown | HealthStatus::Critical => "fail",
    }
}

async fn health(State(s): State<AppState>, method: Method) -> Response {
    let h = s.ctx.health.snapshot();
    let mut checks: BTreeMap<String, Vec<CheckEntry>> = BTreeMap::new();
    for (id, c) in &h.checks {
        checks
            .entry(format!("{id}:status"))
            .or_default()
            .push(CheckEntry {
                component_id: id.to_string(),
                component_type: c.component_type.to_string(),
                status: draft_status(c.status).to_owned(),
                quorate_status: c.status.as_str().to_owned(),
                critical: matches!(c.criticality, quorate_health_api::Criticality::Critical),
                output: c.message.clone(),
                observed_value: c.observed_value,
                duration_ms: c
                    .last_duration
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            });
    }
    // The aggregate counts criticality: a failing non-critical check warns.
    let overall = draft_status(h.status);
    let status = if h.status == HealthStatus::Critical {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = HealthBody {
        status: overall.to_owned(),
        node: s.ctx.config.node_id.to_string(),
        checks,
    };
    if method == Method::OPTIONS {
        return (status, Body::empty()).into_response();
    }
    let mut r = json(status, &body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/health+json"),
    );
    r
}

#[derive(Serialize)]
struct LoopAge {
    role: String,
    acting: bool,
    last_step_ms: Option<u64>,
    limit_ms: u64,
    ok: bool,
}

/// Patroni's liveness rule: 503 when a role's decision loop has not run within the lease TTL
/// (as primary) or twice the TTL (otherwise).
async fn liveness(State(s): State<AppState>, method: Method) -> Response {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut loops = Vec::new();
    for role in s.admin.roles() {
        let acting = s
            .ctx
            .failover
            .status(&role)
            .map(|x| x.borrow().acting)
            .unwrap_or(false);
        let ttl = s.role_ttl(&role);
        let limit = if acting { ttl } else { ttl.saturating_mul(2) };
        // Before the first sample the tracker has nothing to say: the loop counts as live
        // (startup waited for every role's first decision).
        let age = s.tracker.step_age(&role);
        loops.push(LoopAge {
            role: role.to_string(),
            acting,
            last_step_ms: age.map(ms),
            limit_ms: ms(limit),
            ok: age.is_none_or(|a| a <= limit),
        });
    }
    let ok = loops.iter().all(|l| l.ok);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if method == Method::OPTIONS {
        return (status, Body::empty()).into_response();
    }
    json(
        status,
        &serde_json::json!({ "live": ok, "node": s.ctx.config.node_id.to_string(), "roles": loops }),
    )
}

/// Ready: every startup stage ready, a majority of voters seen, a coordination leader known.
async fn readiness(State(s): State<AppState>, method: Method) -> Response {
    let ready = *s.ctx.ready.borrow();
    let m = s.ctx.membership.snapshot();
    let leader = s.ctx.coord.status().await.ok().and_then(|c| c.leader);
    let reason = if !ready {
        Some("the node is starting or stopping".to_owned())
    } else if !m.quorum.has_majority {
        Some(format!(
            "this node sees {} of {} voters, not a majority",
            m.quorum.voters_reachable, m.quorum.voters_known
        ))
    } else if leader.is_none() {
        Some("the coordination store has no leader".to_owned())
    } else {
        None
    };
    let status = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if method == Method::OPTIONS {
        return (status, Body::empty()).into_response();
    }
    json(
        status,
        &serde_json::json!({
            "ready": reason.is_none(),
            "node": s.ctx.config.node_id.to_string(),
            "reason": reason,
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// State.

pub(crate) fn split_brain_text(s: &SplitBrainStatus) -> String {
    match s {
        SplitBrainStatus::NotConfigured => "not-configured".to_owned(),
        SplitBrainStatus::Healthy => "healthy".to_owned(),
        SplitBrainStatus::InMinority {
            reachable, needed, ..
        } => format!("in-minority ({reachable} voters reachable, {needed} needed)"),
        SplitBrainStatus::ConflictingViews { a, b, .. } => {
            format!("conflicting-views ({a} and {b} both claim a majority)")
        }
    }
}

pub(crate) fn member_state(s: MemberState) -> &'static str {
    match s {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Down => "down",
        MemberState::Left => "left",
    }
}

pub(crate) async fn cluster_body(s: &AppState) -> ClusterBody {
    let m = s.ctx.membership.snapshot();
    let coordination = s.ctx.coord.status().await.ok().map(|c| CoordinationView {
        is_leader: c.is_leader(),
        leader: c.leader.map(|l| l.to_string()),
        term: c.term,
        commit_index: c.commit_index,
        applied_index: c.applied_index,
        voters: c.voters.iter().map(ToString::to_string).collect(),
    });
    ClusterBody {
        node: s.ctx.config.node_id.to_string(),
        ready: *s.ctx.ready.borrow(),
        coordination,
        has_majority: m.quorum.has_majority,
        voters_reachable: m.quorum.voters_reachable,
        voters: m.quorum.voters_known,
        split_brain: split_brain_text(&m.split_brain),
        members: m
            .members
            .iter()
            .map(|x| MemberView {
                id: x.id.to_string(),
                address: x.address.to_string(),
                state: member_state(x.state).to_owned(),
                health: x.meta.health.status.as_str().to_owned(),
                api: x.meta.node.api_addr.clone(),
                version: x.meta.node.version.clone(),
            })
            .collect(),
    }
}

async fn cluster(State(s): State<AppState>) -> Response {
    json(StatusCode::OK, &cluster_body(&s).await)
}

/// The role's election key (the failover manager's default prefix).
fn election_key(role: &RoleName) -> String {
    format!("quorate/failover/election/{role}")
}

pub(crate) async fn role_body(s: &AppState, role: &RoleName) -> RoleBody {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let status = s
        .ctx
        .failover
        .status(role)
        .map(|x| x.borrow().clone())
        .unwrap_or_default();
    let (mut holder, mut token, mut lease_remaining_ms) = (None, None, None);
    // Store reads and the policy's explanation are bounded: without a quorum (or with the
    // role task busy in a hook) the page answers with what this node knows.
    if let Ok(Ok(Some(l))) =
        tokio::time::timeout(READ_WAIT, s.ctx.coord.leader(&election_key(role))).await
    {
        holder = String::from_utf8(l.value.clone()).ok();
        token = Some(l.key.token.0);
        if let Ok(Ok(info)) =
            tokio::time::timeout(READ_WAIT, s.ctx.coord.lease_time_to_live(l.key.lease)).await
        {
            lease_remaining_ms = Some(ms(info.remaining));
        }
    }
    let explain = tokio::time::timeout(READ_WAIT, s.admin.explain(role.as_str()))
        .await
        .ok()
        .and_then(Result::ok);
    RoleBody {
        role: role.to_string(),
        holder: holder.or_else(|| status.primary.as_ref().map(ToString::to_string)),
        token,
        lease_remaining_ms,
        lease_ttl_ms: ms(s.role_ttl(role)),
        acting_here: status.acting,
        last_action: status.last_action,
        awaiting_approval: status.awaiting_approval.map(|n| n.to_string()),
        automatic: explain.as_ref().map(|e| e.automatic.clone()),
        candidates: explain
            .as_ref()
            .map(|e| e.nodes.clone())
            .unwrap_or_default(),
        explain: explain.map(|e| e.text),
    }
}

async fn roles(State(s): State<AppState>) -> Response {
    let mut out = Vec::new();
    for r in s.admin.roles() {
        out.push(role_body(&s, &r).await);
    }
    json(StatusCode::OK, &out)
}

async fn one_role(State(s): State<AppState>, Path(role): Path<String>) -> Response {
    match known_role(&s, &role) {
        Ok(r) => json(StatusCode::OK, &role_body(&s, &r).await),
        Err(e) => e,
    }
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    role: Option<String>,
}

async fn history(
    State(s): State<AppState>,
    q: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let role = q.ok().and_then(|Query(q)| q.role);
    let roles = match role {
        Some(r) => match known_role(&s, &r) {
            Ok(r) => vec![r],
            Err(e) => return e,
        },
        None => s.admin.roles(),
    };
    let mut all = Vec::new();
    for r in roles {
        match s.admin.history(r.as_str()) {
            Ok(h) => all.extend(h),
            Err(e) => return admin_error(&e),
        }
    }
    all.sort_by_key(|e| e.at_ms);
    json(StatusCode::OK, &all)
}

/// The effective config, secrets redacted: the cluster key never appears (it is read from a
/// file or the environment), token files are named by path only. Needs a token (read-only is
/// enough) unless auth is off.
async fn config(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = authenticate(&s, &headers) {
        return r;
    }
    let mut raw = s.ctx.config.raw.clone();
    if raw.cluster_key.is_some() {
        raw.cluster_key = Some(Secret::new("<redacted>"));
    }
    let mut v = serde_json::to_value(&raw).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "effective_roles".to_owned(),
            serde_json::to_value(
                raw.roles
                    .iter()
                    .map(|r| {
                        let c = r.role_config(s.ctx.config.profile.is_wan());
                        serde_json::json!({
                            "name": r.name,
                            "lease_ttl_ms": c.lease.ttl.as_millis(),
                            "renew_interval_ms": c.lease.renew_interval.as_millis(),
                            "renew_timeout_ms": c.lease.renew_timeout.as_millis(),
                        })
                    })
                    .collect::<Vec<_>>(),
            )
            .unwrap_or_default(),
        );
    }
    json(StatusCode::OK, &v)
}

/// `/metrics`: OpenMetrics when the scraper asks for it (Prometheus does), else the
/// Prometheus text format 0.0.4.
async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (text, content_type) = if openmetrics {
        (
            s.metrics.render(&s.ctx).await,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            s.metrics.render_prometheus(&s.ctx).await,
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    match text {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "encoding the metrics failed",
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Admin.

/// Parses an optional JSON body: empty means the default; bad JSON is a 400 naming the
/// problem; a body over the limit a 413.
fn parse_body<T: serde::de::DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, Response> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than [api] body_bytes_max = {limit} bytes"),
            )
        } else {
            error(e.status(), "bad_request", e.body_text())
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body is not valid JSON for this call: {e}"),
        )
    })
}

async fn run_admin(s: &AppState, headers: &HeaderMap, op: &str, request: AdminRequest) -> Response {
    let principal = match authenticate(s, headers) {
        Ok(p) => p,
        Err(r) => {
            s.metrics
                .admin_requests
                .get_or_create(&AdminLabel {
                    op: op.to_owned(),
                    code: "401".to_owned(),
                })
                .inc();
            return r;
        }
    };
    let role = request.role().to_owned();
    let moves = matches!(
        request,
        AdminRequest::Switchover { .. }
            | AdminRequest::Failover { .. }
            | AdminRequest::Failback { .. }
    );
    let result = s.admin.run(&principal, request).await;
    let response = match result {
        Err(e) => admin_error(&e),
        Ok(outcome) => {
            let mut confirmed = false;
            if moves && let (Some(chosen), Ok(name)) = (outcome.chosen.clone(), s.admin.role(&role))
            {
                let wait = s.role_ttl(&name).saturating_mul(10).min(CONFIRM_WAIT_MAX);
                confirmed = confirm(s, &name, &chosen, wait).await;
            }
            let status = if moves && !confirmed { 202 } else { 200 };
            json(
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                &AdminReply {
                    status,
                    outcome,
                    confirmed,
                },
            )
        }
    };
    s.metrics
        .admin_requests
        .get_or_create(&AdminLabel {
            op: op.to_owned(),
            code: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

/// Waits up to `wait` until this node sees `chosen` as the primary of `role`.
async fn confirm(s: &AppState, role: &RoleName, chosen: &str, wait: Duration) -> bool {
    let Ok(mut rx) = s.ctx.failover.status(role) else {
        return false;
    };
    tokio::time::timeout(wait, async {
        loop {
            if rx
                .borrow_and_update()
                .primary
                .as_ref()
                .is_some_and(|p| p.as_str() == chosen)
            {
                return true;
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// Patroni's `leader` check: the caller's expected primary must be the primary.
fn check_leader(s: &AppState, role: &str, leader: Option<&str>) -> Result<(), Response> {
    let Some(expected) = leader else {
        return Ok(());
    };
    let name = known_role(s, role)?;
    let primary = s
        .ctx
        .failover
        .status(&name)
        .ok()
        .and_then(|x| x.borrow().primary.clone());
    match primary {
        Some(p) if p.as_str() == expected => Ok(()),
        other => Err(error(
            StatusCode::PRECONDITION_FAILED,
            "refused",
            format!(
                "refused: leader {expected:?} is not the primary of {role} (the primary is {})",
                other.map_or("none".to_owned(), |p| p.to_string())
            ),
        )),
    }
}

async fn switchover(
    State(s): State<AppState>,
    Path(role): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    move_role(&s, role, &headers, body, "switchover").await
}

async fn failover(
    State(s): State<AppState>,
    Path(role): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    move_role(&s, role, &headers, body, "failover").await
}

/// A switchover, failover or failback: `{candidate?, leader?}`, with Patroni's `leader` check.
async fn move_role(
    s: &AppState,
    role: String,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    op: &'static str,
) -> Response {
    if let Err(r) = authenticate(s, headers) {
        return r;
    }
    let b: MoveBody = match parse_body(body, s.settings.body_bytes_max) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = check_leader(s, &role, b.leader.as_deref()) {
        return r;
    }
    let to = b.candidate;
    let req = match op {
        "switchover" => AdminRequest::Switchover { role, to },
        "failback" => AdminRequest::Failback { role, to },
        _ => AdminRequest::Failover { role, to },
    };
    run_admin(s, headers, op, req).await
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// A failback: `{candidate?, leader?}`. With `candidate`, an approval of the failback the role
/// waits for: refused (412) unless that node still is the preferred one.
async fn failback(
    State(s): State<AppState>,
    Path(role): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    move_role(&s, role, &headers, body, "failback").await
}

/// Postpones automatic failbacks: `{ttl?}` (default 1 h).
async fn postpone_failback(
    State(s): State<AppState>,
    Path(role): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = authenticate(&s, &headers) {
        return r;
    }
    let b: PostponeBody = match parse_body(body, s.settings.body_bytes_max) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ttl = match ttl_or_default(b.ttl.as_deref()) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let req = AdminRequest::PostponeFailback {
        role,
        ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
    };
    run_admin(&s, &headers, "postpone", req).await
}

/// A `ttl` field (`"30m"`): [`PAUSE_DEFAULT`] when absent; above zero and at most
/// [`PAUSE_MAX`].
fn ttl_or_default(ttl: Option<&str>) -> Result<Duration, Response> {
    match ttl.map(humantime::parse_duration) {
        None => Ok(PAUSE_DEFAULT),
        Some(Ok(d)) if !d.is_zero() && d <= PAUSE_MAX => Ok(d),
        Some(Ok(d)) => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("ttl {d:?} must be above zero and at most 7 days"),
        )),
        Some(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("ttl: {e} (write e.g. \"30m\" or \"2h\")"),
        )),
    }
}

/// Cancels a hand-off (switchover or failback) under way: the holder keeps the role.
async fn cancel(
    State(s): State<AppState>,
    Path(role): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    bodiless(&s, &headers, body, "cancel", AdminRequest::Cancel { role }).await
}

/// An operation whose body is empty or `{}`.
async fn bodiless(
    s: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    op: &'static str,
    req: AdminRequest,
) -> Response {
    if let Err(r) = authenticate(s, headers) {
        return r;
    }
    if let Err(r) = parse_body::<Empty>(body, s.settings.body_bytes_max) {
        return r;
    }
    run_admin(s, headers, op, req).await
}

async fn maintenance(
    State(s): State<AppState>,
    Path(role): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = authenticate(&s, &headers) {
        return r;
    }
    let b: Option<MaintenanceBody> = match parse_body(body, s.settings.body_bytes_max) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(b) = b else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the body must say {\"on\": true, \"ttl\": \"30m\"} or {\"on\": false}",
        );
    };
    let req = if b.on {
        let ttl = match ttl_or_default(b.ttl.as_deref()) {
            Ok(t) => t,
            Err(r) => return r,
        };
        AdminRequest::Pause {
            role,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        }
    } else {
        AdminRequest::Resume { role }
    };
    run_admin(&s, &headers, "maintenance", req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_sizes_parse_like_patroni() {
        assert_eq!(parse_lag("0"), Some(0));
        assert_eq!(parse_lag("1024"), Some(1024));
        assert_eq!(parse_lag("16kB"), Some(16 * 1024));
        assert_eq!(parse_lag("1MB"), Some(1024 * 1024));
        assert_eq!(parse_lag("1 GB"), Some(1024 * 1024 * 1024));
        assert_eq!(parse_lag("lots"), None);
        assert_eq!(parse_lag("99999999999999999999"), None);
        assert_eq!(parse_lag("18446744073709551615GB"), None);
    }

    #[test]
    fn tokens_compare_whole() {
        let t = Secret::new("0123456789abcdef");
        assert!(same("0123456789abcdef", &t));
        assert!(!same("0123456789abcdeF", &t));
        assert!(!same("0123456789abcde", &t));
        assert!(!same("", &t));
    }
}
