//! The admin HTTP API on `--admin-addr`: publish a module for a region, roll
//! it back, and see what serves every region and the last refused
//! publication. Every request needs `Authorization: Bearer <token>`; one
//! without it is refused before anything is read or changed.
//!
//! - `GET  /v1/regions`: [`RegionStatus`](crate::rollout::RegionStatus) of every region.
//! - `PUT  /v1/regions/{region}/module`: the component's bytes as the body;
//!   200 with the active module, 422 with the refusal, 404 for an unknown
//!   region, 409 at once while another publication is being gated.
//! - `POST /v1/regions/{region}/rollback`: 200 with the module now active,
//!   409 if there is no previous version.
//! - `GET  /v1/publishing`: the publication being gated through this API, if any.
//! - `GET  /v1/fleet`: with a registry, what every worker serves
//!   ([`FleetStatus`](crate::registry::fleet::FleetStatus)).
//!
//! A worker that follows a registry publishes and rolls back through the
//! registry (gated here first), never on itself alone: the answer is then
//! the new revision, and every worker, this one included, swaps when it
//! reads it.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;
use tokio::sync::watch;

use crate::catalog::Catalogs;
use crate::registry::publish::{Publication, PublishError};
use crate::registry::{self, RegionState, Registry, RegistryError};
use crate::rollout::{Origin, Refused, Rollout};

#[derive(Clone)]
struct Admin {
    rollout: Arc<Rollout>,
    token: Arc<str>,
    registry: Option<Arc<RegistryAccess>>,
    /// The publication being gated, if any: one at a time, so bodies of up
    /// to the module cap never queue up behind a slow gate.
    publishing: Arc<Mutex<Option<String>>>,
}

/// Marks a publication in progress until dropped.
struct InProgress(Arc<Mutex<Option<String>>>);

impl InProgress {
    /// Claims the publication slot, or says which publication holds it.
    fn claim(slot: &Arc<Mutex<Option<String>>>, what: String) -> Result<Self, String> {
        let mut current = slot.lock().expect("the publication slot is never held across a panic");
        if let Some(other) = &*current {
            return Err(other.clone());
        }
        *current = Some(what);
        Ok(Self(slot.clone()))
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        *self.0.lock().expect("the publication slot is never held across a panic") = None;
    }
}

/// What the admin API of a registry worker publishes with.
pub struct RegistryAccess {
    pub registry: Arc<dyn Registry>,
    /// Routing and catalogs (for a region's first revision).
    pub catalogs: Arc<Catalogs>,
    pub catalogs_dir: std::path::PathBuf,
    /// Recorded as the publisher: `admin-api@<worker>`.
    pub publisher: String,
}

/// Serves the API on `listener`, over TLS if `tls` is given, until `shutdown`.
///
/// # Errors
/// The listener's address cannot be read.
pub fn serve(
    listener: tokio::net::TcpListener,
    token: String,
    rollout: Arc<Rollout>,
    tls: Option<Arc<rustls::ServerConfig>>,
    registry: Option<Arc<RegistryAccess>>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    // A larger body is refused before it is read; the gate says why.
    let max_body = rollout.max_module_bytes() + 1;
    let state = Admin { rollout, token: token.into(), registry, publishing: Arc::default() };
    let app = Router::new()
        .route("/v1/regions", get(regions))
        .route("/v1/fleet", get(fleet))
        .route("/v1/publishing", get(publishing))
        .route("/v1/regions/{region}/module", put(publish))
        .route("/v1/regions/{region}/rollback", post(rollback))
        .layer(DefaultBodyLimit::max(max_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state);
    crate::http_server::spawn(listener, "the admin API", app, tls, shutdown)
}

/// Reads the bearer token from `path`: one line, surrounding whitespace ignored.
///
/// # Errors
/// The file cannot be read or is empty.
pub fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the admin token file {}", path.display()))?;
    let token = text.trim();
    anyhow::ensure!(!token.is_empty(), "the admin token file {} is empty", path.display());
    Ok(token.to_owned())
}

async fn authorize(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let expected = format!("Bearer {}", admin.token);
    // Compares every byte whatever the first difference, so response time
    // does not tell how much of a guess was right.
    let matches = given.is_some_and(|g| {
        g.len() == expected.len() && g.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if !matches {
        tracing::warn!(path = %request.uri().path(), "admin request without the right bearer token refused");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(json!({"error": "missing or wrong bearer token"})),
        )
            .into_response();
    }
    next.run(request).await
}

async fn regions(State(admin): State<Admin>) -> Response {
    axum::Json(admin.rollout.status()).into_response()
}

async fn publishing(State(admin): State<Admin>) -> Response {
    let current = admin.publishing.lock().expect("the publication slot is never held across a panic").clone();
    axum::Json(json!({"in_progress": current})).into_response()
}

async fn fleet(State(admin): State<Admin>) -> Response {
    let Some(access) = &admin.registry else {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"error": "this offerd follows no registry"})))
            .into_response();
    };
    match crate::registry::fleet::FleetStatus::read(&*access.registry).await {
        Ok(status) => axum::Json(status).into_response(),
        Err(e) => registry_error(&e),
    }
}

async fn publish(State(admin): State<Admin>, Path(region): Path<String>, body: Bytes) -> Response {
    let since =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let what = format!("{region} ({}), since {since}", crate::engine::digest(&body));
    let _in_progress = match InProgress::claim(&admin.publishing, what) {
        Ok(claimed) => claimed,
        Err(other) => {
            let error = format!("another publication is being gated: {other}; try again when it ends");
            return (StatusCode::CONFLICT, axum::Json(json!({"error": error}))).into_response();
        }
    };
    if let Some(access) = &admin.registry {
        let publication = Publication {
            region,
            module: Some(body.to_vec()),
            catalog: None,
            publisher: access.publisher.clone(),
            expect_revision: None,
        };
        let engine = admin.rollout.engine();
        let published = registry::publish::publish(
            &*access.registry,
            engine,
            &access.catalogs,
            &access.catalogs_dir,
            &[],
            publication,
        )
        .await;
        return revision_answer(published.map(|p| p.state));
    }
    let rollout = admin.rollout.clone();
    // Compiling and gating run module code: off the async threads.
    let published =
        tokio::task::spawn_blocking(move || rollout.publish(&region, body.to_vec(), Origin::AdminApi)).await;
    answer(published)
}

async fn rollback(State(admin): State<Admin>, Path(region): Path<String>) -> Response {
    if let Some(access) = &admin.registry {
        let rolled = registry::publish::rollback(&*access.registry, &region, None, access.publisher.clone()).await;
        return revision_answer(rolled);
    }
    let rollout = admin.rollout.clone();
    answer(tokio::task::spawn_blocking(move || rollout.rollback(&region)).await)
}

fn answer(result: Result<Result<Arc<crate::enricher::Active>, Refused>, tokio::task::JoinError>) -> Response {
    match result {
        Ok(Ok(active)) => {
            let info = active.rules.module().info();
            axum::Json(json!({
                "name": info.name,
                "version": info.version.to_string(),
                "digest": info.digest,
                "signed_by": info.signed_by,
                "contract": info.contract.version(),
            }))
            .into_response()
        }
        Ok(Err(refused)) => {
            let status = match refused {
                Refused::UnknownRegion(_) => StatusCode::NOT_FOUND,
                Refused::NothingToRollBack(_) => StatusCode::CONFLICT,
                Refused::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            (status, axum::Json(json!({"error": refused.to_string()}))).into_response()
        }
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"error": format!("publication task failed: {e}")})))
                .into_response()
        }
    }
}

/// A registry change: 200 with the new revision, else why not.
fn revision_answer(result: Result<RegionState, PublishError>) -> Response {
    match result {
        Ok(state) => axum::Json(state.current).into_response(),
        Err(PublishError::Registry(e)) => registry_error(&e),
        Err(e @ PublishError::Refused { .. }) => {
            (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({"error": e.to_string()}))).into_response()
        }
        Err(PublishError::UnknownRegion(e)) => (StatusCode::NOT_FOUND, axum::Json(json!({"error": e}))).into_response(),
        Err(PublishError::Invalid(e)) => (StatusCode::CONFLICT, axum::Json(json!({"error": e}))).into_response(),
    }
}

fn registry_error(e: &RegistryError) -> Response {
    let status = match e {
        RegistryError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
        RegistryError::Conflict { .. } => StatusCode::CONFLICT,
        RegistryError::BadObject { .. } | RegistryError::Malformed { .. } => StatusCode::BAD_GATEWAY,
    };
    (status, axum::Json(json!({"error": e.to_string()}))).into_response()
}
