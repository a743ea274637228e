//! The registry on AWS: control state in a DynamoDB table, bytes in S3.
//!
//! ```text
//! table (pk, sk)        pk = "region", sk = <region>:  revision (N), state (S, JSON RegionState)
//!                       pk = "worker", sk = <worker>:  report (S, JSON WorkerReport)
//! s3://<bucket>/<prefix>/modules/sha256-<hex>.wasm
//! s3://<bucket>/<prefix>/catalogs/sha256-<hex>.toml
//! ```
//!
//! Every region is read in one consistent Query; every change of a region is
//! a conditional write on its `revision`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};

use super::{ObjectKind, RegionItem, RegionState, Registry, RegistryError, WorkerReport, verify};
use crate::stream::aws::explain;

const PK: &str = "pk";
const SK: &str = "sk";
const REGION: &str = "region";
const WORKER: &str = "worker";
const REVISION: &str = "revision";
const STATE: &str = "state";
const REPORT: &str = "report";

/// How long table creation may take before start-up gives up.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);
/// Most pages one listing reads: 1 MB each, far beyond any real fleet.
const MAX_PAGES: usize = 64;

/// Where the registry is: `--registry-table`, `--registry-bucket`, `--registry-prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub table: String,
    pub bucket: String,
    /// Without leading or trailing slashes; may be empty.
    pub prefix: String,
}

pub struct AwsRegistry {
    location: Location,
    dynamodb: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
}

/// Clients bounded in time: a registry call never hangs a poll or a publication.
pub fn clients(sdk: &aws_config::SdkConfig) -> (aws_sdk_dynamodb::Client, aws_sdk_s3::Client) {
    let dynamodb_timeouts = aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(3))
        .operation_timeout(Duration::from_secs(8))
        .build();
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(sdk).timeout_config(dynamodb_timeouts).build(),
    );
    // Objects are up to the module size cap: a minute for one.
    let s3_timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_timeout(Duration::from_secs(60))
        .build();
    let mut s3 = aws_sdk_s3::config::Builder::from(sdk).timeout_config(s3_timeouts);
    let local = sdk.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
    if local {
        // An S3-compatible server on an endpoint of its own: bucket in the
        // path (`bucket.127.0.0.1` does not resolve), and no default request
        // checksums, which third-party servers mishandle (aws-sdk-rust #1240).
        s3 = s3
            .force_path_style(true)
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
    }
    (dynamodb, aws_sdk_s3::Client::from_conf(s3.build()))
}

impl AwsRegistry {
    /// Opens the registry: creates the table (on-demand) if missing and
    /// waits until it is active; checks the bucket exists and can be reached.
    ///
    /// # Errors
    /// The table or bucket cannot be used; the message names which and why.
    pub async fn open(
        location: Location,
        dynamodb: aws_sdk_dynamodb::Client,
        s3: aws_sdk_s3::Client,
    ) -> anyhow::Result<Self> {
        let registry = Self { location, dynamodb, s3 };
        // No answer at all is an outage, not a bad setting: a worker then
        // serves what it served last, and polls until the registry answers.
        if !registry.open_table().await? {
            return Ok(registry);
        }
        let bucket = &registry.location.bucket;
        if let Err(e) = registry.s3.head_bucket().bucket(bucket).send().await {
            let status = e.raw_response().map(|r| r.status().as_u16());
            match status {
                Some(404) => bail!("the registry bucket {bucket:?} does not exist (--registry-bucket)"),
                Some(403) => bail!("no permission to use the registry bucket {bucket:?} (--registry-bucket)"),
                status if is_outage(status, e.code()) => {
                    tracing::warn!(bucket, error = %explain(&e), "the registry bucket does not answer");
                }
                _ => bail!("reaching the registry bucket {bucket:?}: {}", explain(&e)),
            }
        }
        Ok(registry)
    }

    /// Whether the table answered (and is usable: else an error).
    async fn open_table(&self) -> anyhow::Result<bool> {
        let name = &self.location.table;
        let deadline = Instant::now() + TABLE_ACTIVE_TIMEOUT;
        let mut created = false;
        loop {
            match self.dynamodb.describe_table().table_name(name).send().await {
                Ok(out) => {
                    let description = out.table().context("DescribeTable answered without a table")?;
                    let keys: Vec<(&str, &KeyType)> =
                        description.key_schema().iter().map(|k| (k.attribute_name(), k.key_type())).collect();
                    if keys != [(PK, &KeyType::Hash), (SK, &KeyType::Range)] {
                        bail!(
                            "DynamoDB table {name:?} is not a registry table: its key is {keys:?}, a registry's is \
                             {PK:?} (hash) and {SK:?} (range), both strings (--registry-table)"
                        );
                    }
                    if description.table_status() == Some(&TableStatus::Active) {
                        return Ok(true);
                    }
                }
                Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) && !created => {
                    tracing::info!(table = name, "creating the registry table");
                    let key = |name: &str, kind: KeyType| {
                        KeySchemaElement::builder().attribute_name(name).key_type(kind).build()
                    };
                    let string = |name: &str| {
                        AttributeDefinition::builder()
                            .attribute_name(name)
                            .attribute_type(ScalarAttributeType::S)
                            .build()
                    };
                    let created_now = self
                        .dynamodb
                        .create_table()
                        .table_name(name)
                        .billing_mode(BillingMode::PayPerRequest)
                        .key_schema(key(PK, KeyType::Hash)?)
                        .key_schema(key(SK, KeyType::Range)?)
                        .attribute_definitions(string(PK)?)
                        .attribute_definitions(string(SK)?)
                        .send()
                        .await;
                    match created_now {
                        Ok(_) => {}
                        // Another process created it first.
                        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {}
                        Err(e) => bail!("creating the registry table {name:?}: {}", explain(&e)),
                    }
                    created = true;
                }
                Err(e) if is_outage(e.raw_response().map(|r| r.status().as_u16()), e.code()) => {
                    tracing::warn!(table = name, error = %explain(&e), "the registry table does not answer");
                    return Ok(false);
                }
                Err(e) => bail!("reading the registry table {name:?} (--registry-table): {}", explain(&e)),
            }
            if Instant::now() > deadline {
                bail!("the registry table {name:?} is not active after {TABLE_ACTIVE_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn object_key(&self, kind: ObjectKind, digest: &str) -> Result<String, RegistryError> {
        let key = kind.key(digest).map_err(|reason| RegistryError::BadObject { key: digest.to_owned(), reason })?;
        Ok(if self.location.prefix.is_empty() { key } else { format!("{}/{key}", self.location.prefix) })
    }

    /// Every item under `pk`, read consistently, page by page.
    async fn query(&self, pk: &str) -> Result<Vec<HashMap<String, AttributeValue>>, RegistryError> {
        let mut items = Vec::new();
        let mut start = None;
        for _ in 0..MAX_PAGES {
            let out = self
                .dynamodb
                .query()
                .table_name(&self.location.table)
                .consistent_read(true)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", s(pk))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unreachable("reading", &self.location.table, &e))?;
            items.extend(out.items().iter().cloned());
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(items);
            }
        }
        Err(RegistryError::Unreachable(format!("{pk} items span more than {MAX_PAGES} pages")))
    }
}

/// No answer, a server error or throttling: the store is having an outage,
/// which a worker rides out on what it served last, not a setting to fix.
fn is_outage(status: Option<u16>, code: Option<&str>) -> bool {
    let throttled = code.is_some_and(|c| c.contains("Throttl") || c == "ProvisionedThroughputExceededException");
    status.is_none_or(|s| s >= 500) || throttled
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn unreachable<E, R>(what: &str, name: &str, e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> RegistryError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    RegistryError::Unreachable(format!("{what} {name}: {}", explain(e)))
}

/// A region item's state, checked against its key and revision attribute.
fn region_of(item: &HashMap<String, AttributeValue>) -> RegionItem {
    let region = item.get(SK).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
    let malformed = |reason: String| RegistryError::Malformed { region: region.clone(), reason };
    let text = item.get(STATE).and_then(|v| v.as_s().ok()).ok_or_else(|| malformed("no state attribute".into()))?;
    let state: RegionState = serde_json::from_str(text).map_err(|e| malformed(format!("state: {e}")))?;
    let revision: Option<u64> = item.get(REVISION).and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok());
    if revision != Some(state.current.revision) {
        return Err(malformed(format!(
            "revision attribute {revision:?} differs from the state's {}",
            state.current.revision
        )));
    }
    if state.region != region {
        return Err(malformed(format!("state is for region {:?}", state.region)));
    }
    Ok(state)
}

#[async_trait::async_trait]
impl Registry for AwsRegistry {
    fn describe(&self) -> String {
        let Location { table, bucket, prefix } = &self.location;
        format!("registry table {table:?}, bucket s3://{bucket}/{prefix}")
    }

    async fn regions(&self) -> Result<Vec<RegionItem>, RegistryError> {
        Ok(self.query(REGION).await?.iter().map(region_of).collect())
    }

    async fn region(&self, region: &str) -> Result<Option<RegionState>, RegistryError> {
        let out = self
            .dynamodb
            .get_item()
            .table_name(&self.location.table)
            .consistent_read(true)
            .key(PK, s(REGION))
            .key(SK, s(region))
            .send()
            .await
            .map_err(|e| unreachable("reading", &self.location.table, &e))?;
        out.item().map(region_of).transpose()
    }

    async fn advance(&self, next: &RegionState, expected: Option<u64>) -> Result<(), RegistryError> {
        let state = serde_json::to_string(next).expect("a region state always serialises");
        let mut put = self
            .dynamodb
            .put_item()
            .table_name(&self.location.table)
            .item(PK, s(REGION))
            .item(SK, s(&next.region))
            .item(REVISION, AttributeValue::N(next.current.revision.to_string()))
            .item(STATE, s(&state));
        put = match expected {
            None => put.condition_expression("attribute_not_exists(#sk)").expression_attribute_names("#sk", SK),
            Some(n) => put
                .condition_expression("#rev = :rev")
                .expression_attribute_names("#rev", REVISION)
                .expression_attribute_values(":rev", AttributeValue::N(n.to_string())),
        };
        let failure = match put.send().await {
            Ok(_) => return Ok(()),
            Err(e)
                if e.as_service_error().and_then(aws_sdk_dynamodb::error::ProvideErrorMetadata::code)
                    == Some("ConditionalCheckFailedException") =>
            {
                None
            }
            Err(e) => Some(unreachable("writing", &self.location.table, &e)),
        };
        // The outcome of a write whose answer was lost (a timeout, or a
        // retry of a write that landed failing its own condition) is
        // whatever the item holds now: this very state means it landed.
        let now = self.region(&next.region).await;
        match (failure, now) {
            (_, Ok(Some(current))) if current == *next => Ok(()),
            (None, Ok(winner)) => Err(RegistryError::Conflict { expected, winner: winner.map(Box::new) }),
            (None, Err(e)) | (Some(e), _) => Err(e),
        }
    }

    async fn put_object(&self, kind: ObjectKind, bytes: &[u8]) -> Result<String, RegistryError> {
        let digest = crate::engine::digest(bytes);
        let key = self.object_key(kind, &digest)?;
        let bucket = &self.location.bucket;
        // Content-addressed: bytes already there are kept if they are these
        // (read back and hashed), replaced if something else took the key.
        match self.s3.head_object().bucket(bucket).key(&key).send().await {
            Ok(_) => match self.object(kind, &digest, bytes.len() as u64).await {
                Ok(_) => return Ok(digest),
                Err(RegistryError::BadObject { reason, .. }) => {
                    tracing::warn!(key, %reason, "an object under this digest holds other bytes; replacing it");
                }
                Err(e) => return Err(e),
            },
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {}
            Err(e) => return Err(RegistryError::Unreachable(format!("s3://{bucket}/{key}: {}", explain(&e)))),
        }
        self.s3
            .put_object()
            .bucket(bucket)
            .key(&key)
            .body(bytes.to_vec().into())
            .send()
            .await
            .map_err(|e| RegistryError::Unreachable(format!("uploading s3://{bucket}/{key}: {}", explain(&e))))?;
        Ok(digest)
    }

    async fn object(&self, kind: ObjectKind, digest: &str, limit: u64) -> Result<Vec<u8>, RegistryError> {
        let key = self.object_key(kind, digest)?;
        let bucket = &self.location.bucket;
        let url = format!("s3://{bucket}/{key}");
        let out = match self.s3.get_object().bucket(bucket).key(&key).send().await {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .is_some_and(aws_sdk_s3::operation::get_object::GetObjectError::is_no_such_key) =>
            {
                return Err(RegistryError::BadObject { key: url, reason: "missing".into() });
            }
            Err(e) => return Err(RegistryError::Unreachable(format!("reading {url}: {}", explain(&e)))),
        };
        let too_large = |size: u64| RegistryError::BadObject {
            key: url.clone(),
            reason: format!("{size} bytes is over the {limit}-byte cap"),
        };
        let declared = out.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        if declared > limit {
            return Err(too_large(declared));
        }
        // The server may lie about the length: counted as it arrives.
        let mut body = out.body;
        let mut bytes = Vec::with_capacity(declared as usize);
        while let Some(chunk) =
            body.try_next().await.map_err(|e| RegistryError::Unreachable(format!("reading {url}: {e}")))?
        {
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(too_large((bytes.len() + chunk.len()) as u64));
            }
            bytes.extend_from_slice(&chunk);
        }
        verify(&url, digest, &bytes)?;
        Ok(bytes)
    }

    async fn report(&self, report: &WorkerReport) -> Result<(), RegistryError> {
        let text = serde_json::to_string(report).expect("a worker report always serialises");
        self.dynamodb
            .put_item()
            .table_name(&self.location.table)
            .item(PK, s(WORKER))
            .item(SK, s(&report.worker))
            .item(REPORT, s(&text))
            .send()
            .await
            .map_err(|e| unreachable("reporting to", &self.location.table, &e))?;
        Ok(())
    }

    async fn forget_worker(&self, worker: &str) -> Result<(), RegistryError> {
        self.dynamodb
            .delete_item()
            .table_name(&self.location.table)
            .key(PK, s(WORKER))
            .key(SK, s(worker))
            .send()
            .await
            .map_err(|e| unreachable("writing", &self.location.table, &e))?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerReport>, RegistryError> {
        let items = self.query(WORKER).await?;
        Ok(items
            .iter()
            .filter_map(|item| {
                let text = item.get(REPORT).and_then(|v| v.as_s().ok())?;
                serde_json::from_str(text)
                    .map_err(|e| tracing::warn!(error = %e, "malformed worker report in the registry; skipped"))
                    .ok()
            })
            .collect())
    }
}
