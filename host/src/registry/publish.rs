//! Moving a region to a new revision: a publication (module and/or catalog,
//! gated where it is made, bytes uploaded before the item points at them)
//! or a roll-back to an earlier revision. Shared by `offerd publish`, `offerd
//! rollback` and the admin API of a worker that follows a registry.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Action, MAX_CATALOG_BYTES, ObjectKind, RegionState, Registry, RegistryError, Revision, now_ms};
use crate::catalog::Catalogs;
use crate::engine::{Engine, digest};
use crate::golden::Case;
use crate::rollout::{self, Refused};

/// What a publication changes.
pub struct Publication {
    pub region: String,
    /// The new module; `None` re-gates the current one with a new catalog.
    pub module: Option<Vec<u8>>,
    /// The new catalog (a `<region>.toml`'s bytes); `None` keeps the current
    /// one, or for a region's first revision, the one in the catalog directory.
    pub catalog: Option<Vec<u8>>,
    pub publisher: String,
    /// Refuse unless the region is at this revision (`0`: none yet).
    pub expect_revision: Option<u64>,
}

/// Why a publication or roll-back did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("refused for {region}: {refused}")]
    Refused { region: String, refused: Refused },
    #[error("region {0:?} is not defined in regions.toml")]
    UnknownRegion(String),
    #[error("{0}")]
    Invalid(String),
}

/// The revision a change made, or the current one if it changed nothing.
#[derive(Debug)]
pub struct Published {
    pub state: RegionState,
    /// False when the region already served exactly these bytes.
    pub changed: bool,
}

/// Gates the publication locally (contract, signature, the region's catalog,
/// golden `cases`, smoke batch), uploads what is new, then moves the region
/// to the next revision with one conditional write. Runs module code: call
/// it off the async threads' hot paths (it blocks on the gate).
///
/// # Errors
/// The gate refused it, the registry is unreachable, or another publisher
/// moved the region first (naming the winner).
pub async fn publish(
    registry: &dyn Registry,
    engine: &Engine,
    catalogs: &Catalogs,
    catalogs_dir: &Path,
    cases: &[(PathBuf, Case)],
    publication: Publication,
) -> Result<Published, PublishError> {
    let Publication { region, module, catalog, publisher, expect_revision } = publication;
    if catalogs.region(&region).is_none() {
        return Err(PublishError::UnknownRegion(region));
    }
    let current = registry.region(&region).await?;
    let current_revision = current.as_ref().map(|s| s.current.revision);
    if let Some(expected) = expect_revision
        && current_revision.unwrap_or(0) != expected
    {
        return Err(RegistryError::Conflict { expected: Some(expected), winner: current.map(Box::new) }.into());
    }
    let module_given = module.is_some();
    let module = match (module, &current) {
        (Some(bytes), _) => bytes,
        (None, Some(state)) => {
            registry.object(ObjectKind::Module, &state.current.module, engine.limits().max_module_bytes as u64).await?
        }
        (None, None) => {
            return Err(PublishError::Invalid(format!("{region} has no revision yet: publish a module first")));
        }
    };
    let catalog_file = catalogs_dir.join(format!("{region}.toml"));
    let catalog = match (catalog, &current) {
        (Some(bytes), _) => bytes,
        (None, Some(state)) => registry.object(ObjectKind::Catalog, &state.current.catalog, MAX_CATALOG_BYTES).await?,
        (None, None) => crate::config_file::read_limited(&catalog_file, MAX_CATALOG_BYTES)
            .map_err(|e| PublishError::Invalid(format!("reading {}: {e}", catalog_file.display())))?,
    };
    let (module_digest, catalog_digest) = (digest(&module), digest(&catalog));
    if let Some(state) = &current
        && state.current.module == module_digest
        && state.current.catalog == catalog_digest
    {
        return Ok(Published { state: state.clone(), changed: false });
    }
    let refused = |refused: Refused| PublishError::Refused { region: region.clone(), refused };
    let parsed = catalogs.parse_region(&region, &catalog_file, &catalog).map_err(|e| refused(e.into()))?;
    // Compiling and gating run module code: off the async threads.
    let (gated, module) = {
        let (engine, cases) = (engine.clone(), cases.to_vec());
        tokio::task::spawn_blocking(move || {
            let gated = rollout::gate(&engine, &module, Arc::new(parsed), &cases);
            (gated.map(|rules| rules.module().info().clone()), module)
        })
        .await
        .map_err(|e| PublishError::Invalid(format!("the gate panicked: {e}")))?
    };
    let info = gated.map_err(refused)?;
    registry.put_object(ObjectKind::Module, &module).await?;
    registry.put_object(ObjectKind::Catalog, &catalog).await?;
    let next = Revision {
        revision: next_revision(current_revision.unwrap_or(0))?,
        module: module_digest,
        catalog: catalog_digest,
        rule_name: info.name.clone(),
        rule_version: info.version.to_string(),
        signed_by: info.signed_by.clone(),
        publisher,
        published_at_ms: now_ms(),
        action: if module_given { Action::Publish } else { Action::Catalog },
    };
    let state = RegionState::advanced(current.as_ref(), &region, next);
    registry.advance(&state, current_revision).await?;
    Ok(Published { state, changed: true })
}

/// Moves `region` back to revision `to` (default: the one before the
/// current one) as a new revision. No gate here: the bytes passed one when
/// they were published, and every worker gates them again.
///
/// # Errors
/// The region has no such earlier revision, the registry is unreachable,
/// or another change landed first.
pub async fn rollback(
    registry: &dyn Registry,
    region: &str,
    to: Option<u64>,
    publisher: String,
) -> Result<RegionState, PublishError> {
    let Some(current) = registry.region(region).await? else {
        return Err(PublishError::Invalid(format!("{region} has no revision in the {}", registry.describe())));
    };
    let target = match to {
        Some(n) if n == current.current.revision => {
            return Err(PublishError::Invalid(format!("{region} is at revision {n} already")));
        }
        Some(n) => current.revision(n).ok_or_else(|| {
            let kept: Vec<String> = current.history.iter().map(|r| r.revision.to_string()).collect();
            PublishError::Invalid(format!(
                "{region} has no revision {n} in its history (kept: {})",
                if kept.is_empty() { "none".into() } else { kept.join(", ") }
            ))
        })?,
        None => current
            .history
            .first()
            .ok_or_else(|| PublishError::Invalid(format!("{region} has no earlier revision to roll back to")))?,
    };
    let next = Revision {
        revision: next_revision(current.current.revision)?,
        publisher,
        published_at_ms: now_ms(),
        action: Action::Rollback { to: target.revision },
        ..target.clone()
    };
    let state = RegionState::advanced(Some(&current), region, next);
    registry.advance(&state, Some(current.current.revision)).await?;
    Ok(state)
}

/// The revision after `n`; an item written by hand at the very last one is refused.
fn next_revision(n: u64) -> Result<u64, PublishError> {
    n.checked_add(1).ok_or_else(|| PublishError::Invalid(format!("revision {n} has no successor")))
}

/// `user@host`, the default publisher.
pub fn default_publisher() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", crate::host_name())
}
