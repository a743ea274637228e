//! The lease table in DynamoDB, in the Kinesis Client Library's schema: one
//! item per shard, keyed by `leaseKey` (the shard id). Every change of an
//! item is a conditional write on its `leaseCounter` (and owner where a
//! worker acts on its own lease), so two workers never both believe they
//! hold a lease, without any agreement between their clocks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};

use crate::stream::aws::explain;

/// The KCL's attribute names (`DynamoDBLeaseSerializer`).
mod attr {
    pub const KEY: &str = "leaseKey";
    pub const OWNER: &str = "leaseOwner";
    pub const COUNTER: &str = "leaseCounter";
    pub const CHECKPOINT: &str = "checkpoint";
    pub const SUB_SEQUENCE: &str = "checkpointSubSequenceNumber";
    pub const OWNER_SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
    pub const PARENTS: &str = "parentShardId";
    pub const CHILDREN: &str = "childShardIds";
    pub const STARTING_HASH_KEY: &str = "startingHashKey";
    pub const ENDING_HASH_KEY: &str = "endingHashKey";
    /// offerd's own, ignored by the KCL: the time (Unix milliseconds) an
    /// `AT_TIMESTAMP` or `LATEST` position means, so that every worker that
    /// takes the lease starts at the same place.
    pub const START_TIMESTAMP: &str = "offerdStartTimestamp";
    /// offerd's own: the worker that asked the owner to hand the lease over
    /// at its next batch boundary (instead of stealing it mid-batch).
    pub const HANDOFF_TO: &str = "offerdHandoffTo";
}

/// How long table creation may take before start-up gives up.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// One item of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    pub owner: Option<String>,
    pub counter: u64,
    /// A sequence number, or `TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`, `SHARD_END`.
    pub checkpoint: String,
    /// Position inside a KPL aggregate at `checkpoint` (the KCL's); 0 for a whole record.
    pub sub_sequence: u64,
    pub owner_switches: u64,
    pub parents: Vec<String>,
    pub children: Vec<String>,
    pub hash_keys: Option<(String, String)>,
    pub start_timestamp_ms: Option<i64>,
    /// A worker waiting for the owner to hand this lease over.
    pub handoff_to: Option<String>,
}

/// The sentinel of a closed shard read to its end.
pub const SHARD_END: &str = "SHARD_END";

/// Why a write on a lease failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The item moved on: another worker took the lease, or it is gone.
    #[error("the lease of {0} is held by another worker now")]
    Lost(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

#[derive(Clone)]
pub struct LeaseTable {
    client: Client,
    name: String,
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A failed conditional write is [`LeaseError::Lost`]; anything else is
/// explained.
fn classify<E, R>(e: SdkError<E, R>, key: &str, what: &str) -> LeaseError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    if e.as_service_error().and_then(|s| s.code()) == Some("ConditionalCheckFailedException") {
        return LeaseError::Lost(key.to_owned());
    }
    LeaseError::Other(anyhow::anyhow!("{what} the lease of {key}: {}", explain(&e)))
}

impl LeaseTable {
    /// Opens the table `name`, creating it (on-demand billing) if missing
    /// and waiting until it is active.
    ///
    /// # Errors
    /// The table cannot be described or created (a missing permission, say),
    /// or exists with another key schema than the KCL's.
    pub async fn open(client: Client, name: &str) -> anyhow::Result<Self> {
        let table = Self { client, name: name.to_owned() };
        let deadline = Instant::now() + TABLE_ACTIVE_TIMEOUT;
        let mut created = false;
        loop {
            match table.client.describe_table().table_name(name).send().await {
                Ok(out) => {
                    let description = out.table().context("DescribeTable answered without a table")?;
                    let keys: Vec<(&str, &KeyType)> =
                        description.key_schema().iter().map(|k| (k.attribute_name(), k.key_type())).collect();
                    if keys != [(attr::KEY, &KeyType::Hash)] {
                        bail!(
                            "DynamoDB table {name:?} is not a lease table: its key is {keys:?}, a lease table's is \
                             {:?} (string) alone",
                            attr::KEY
                        );
                    }
                    if description.table_status() == Some(&TableStatus::Active) {
                        return Ok(table);
                    }
                }
                Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) && !created => {
                    tracing::info!(table = name, "creating the lease table");
                    let created_now = table
                        .client
                        .create_table()
                        .table_name(name)
                        .billing_mode(BillingMode::PayPerRequest)
                        .key_schema(
                            KeySchemaElement::builder().attribute_name(attr::KEY).key_type(KeyType::Hash).build()?,
                        )
                        .attribute_definitions(
                            AttributeDefinition::builder()
                                .attribute_name(attr::KEY)
                                .attribute_type(ScalarAttributeType::S)
                                .build()?,
                        )
                        .send()
                        .await;
                    match created_now {
                        Ok(_) => {}
                        // Another worker created it first.
                        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {}
                        Err(e) => bail!("creating the lease table {name:?}: {}", explain(&e)),
                    }
                    created = true;
                }
                Err(e) => bail!("reading the lease table {name:?}: {}", explain(&e)),
            }
            if Instant::now() > deadline {
                bail!("the lease table {name:?} is not active after {TABLE_ACTIVE_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A table that must exist already (for reading it), checked like [`Self::open`].
    ///
    /// # Errors
    /// The table is missing, unreadable or not a lease table.
    pub async fn existing(client: Client, name: &str) -> anyhow::Result<Self> {
        let out = client.describe_table().table_name(name).send().await.map_err(|e| {
            if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) {
                anyhow::anyhow!("there is no lease table {name:?}")
            } else {
                anyhow::anyhow!("reading the lease table {name:?}: {}", explain(&e))
            }
        })?;
        let keys: Vec<&str> =
            out.table().map(|t| t.key_schema().iter().map(|k| k.attribute_name()).collect()).unwrap_or_default();
        if keys != [attr::KEY] {
            bail!("DynamoDB table {name:?} is not a lease table: its key is {keys:?}");
        }
        Ok(Self { client, name: name.to_owned() })
    }

    /// Every lease, read consistently, and the items that are not leases
    /// offerd can use.
    ///
    /// # Errors
    /// The scan fails.
    pub async fn scan(&self) -> anyhow::Result<Scanned> {
        let mut scanned = Scanned::default();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.name)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("scanning the lease table {:?}: {}", self.name, explain(&e)))?;
            for item in out.items() {
                match parse(item) {
                    Ok(lease) => scanned.leases.push(lease),
                    Err(malformed) => scanned.malformed.push(malformed),
                }
            }
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(scanned),
            }
        }
    }

    /// Creates `lease` unless an item with its key exists; whether it did.
    ///
    /// # Errors
    /// The write fails for another reason.
    pub async fn create(&self, lease: &Lease) -> anyhow::Result<bool> {
        let mut item = HashMap::from([
            (attr::KEY.to_owned(), s(&lease.key)),
            (attr::COUNTER.to_owned(), n(lease.counter)),
            (attr::CHECKPOINT.to_owned(), s(&lease.checkpoint)),
            (attr::SUB_SEQUENCE.to_owned(), n(lease.sub_sequence)),
            (attr::OWNER_SWITCHES.to_owned(), n(lease.owner_switches)),
        ]);
        if let Some(owner) = &lease.owner {
            item.insert(attr::OWNER.to_owned(), s(owner));
        }
        if !lease.parents.is_empty() {
            item.insert(attr::PARENTS.to_owned(), AttributeValue::Ss(lease.parents.clone()));
        }
        if !lease.children.is_empty() {
            item.insert(attr::CHILDREN.to_owned(), AttributeValue::Ss(lease.children.clone()));
        }
        if let Some((start, end)) = &lease.hash_keys {
            item.insert(attr::STARTING_HASH_KEY.to_owned(), s(start));
            item.insert(attr::ENDING_HASH_KEY.to_owned(), s(end));
        }
        if let Some(ms) = lease.start_timestamp_ms {
            item.insert(attr::START_TIMESTAMP.to_owned(), AttributeValue::N(ms.to_string()));
        }
        match self
            .client
            .put_item()
            .table_name(&self.name)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#key)")
            .expression_attribute_names("#key", attr::KEY)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match classify(e, &lease.key, "creating") {
                LeaseError::Lost(_) => Ok(false),
                LeaseError::Other(e) => Err(e),
            },
        }
    }

    /// Renews a lease this worker holds at `counter`: the new counter.
    ///
    /// # Errors
    /// [`LeaseError::Lost`] when another worker took it.
    pub async fn renew(&self, key: &str, owner: &str, counter: u64) -> Result<u64, LeaseError> {
        let next = next_counter(key, counter)?;
        let landed = |l: &Lease| l.owner.as_deref() == Some(owner) && l.counter == next;
        self.update_held(key, owner, counter, "SET #counter = :next", &[], Vec::new(), "renewing", &landed).await
    }

    /// Records a checkpoint of a lease this worker holds at `counter` (which
    /// renews it too): the new counter. Fenced: refused once the lease has
    /// moved to another worker.
    ///
    /// # Errors
    /// [`LeaseError::Lost`] when another worker took it.
    pub async fn checkpoint(&self, key: &str, owner: &str, counter: u64, checkpoint: &str) -> Result<u64, LeaseError> {
        match self.checkpoint_at(key, owner, counter, checkpoint).await {
            // Still this worker's, at another counter: one of its own writes
            // landed unseen (a renewal whose answer was lost). The
            // checkpoint is not there yet: write it at the counter read.
            Err(LeaseError::Lost(_)) => match self.read(key).await {
                Some(lease) if lease.owner.as_deref() == Some(owner) && lease.counter != counter => {
                    self.checkpoint_at(key, owner, lease.counter, checkpoint).await
                }
                _ => Err(LeaseError::Lost(key.to_owned())),
            },
            other => other,
        }
    }

    async fn checkpoint_at(&self, key: &str, owner: &str, counter: u64, checkpoint: &str) -> Result<u64, LeaseError> {
        let next = next_counter(key, counter)?;
        // Read back, the write landed only if the value is there too.
        let landed = |l: &Lease| {
            l.owner.as_deref() == Some(owner) && l.counter == next && l.checkpoint == checkpoint && l.sub_sequence == 0
        };
        self.update_held(
            key,
            owner,
            counter,
            "SET #counter = :next, #checkpoint = :checkpoint, #sub = :zero, #switches = :zero",
            &[("#checkpoint", attr::CHECKPOINT), ("#sub", attr::SUB_SEQUENCE), ("#switches", attr::OWNER_SWITCHES)],
            vec![(":checkpoint", s(checkpoint)), (":zero", n(0))],
            "checkpointing",
            &landed,
        )
        .await
    }

    /// Gives up a lease this worker holds at `counter`, so that another
    /// worker may take it at once.
    ///
    /// # Errors
    /// [`LeaseError::Lost`] when another worker took it meanwhile.
    pub async fn release(&self, key: &str, owner: &str, counter: u64) -> Result<u64, LeaseError> {
        let next = next_counter(key, counter)?;
        let landed = |l: &Lease| l.owner.is_none() && l.counter == next;
        self.update_held(
            key,
            owner,
            counter,
            "SET #counter = :next REMOVE #owner, #handoff",
            &[("#handoff", attr::HANDOFF_TO)],
            Vec::new(),
            "releasing",
            &landed,
        )
        .await
    }

    /// Hands a lease this worker holds at `counter` to the worker that asked
    /// for it, once its shard is checkpointed and stopped here.
    ///
    /// # Errors
    /// [`LeaseError::Lost`] when another worker took it meanwhile.
    pub async fn hand_over(&self, key: &str, owner: &str, counter: u64, to: &str) -> Result<u64, LeaseError> {
        let next = next_counter(key, counter)?;
        let landed = |l: &Lease| l.owner.as_deref() == Some(to) && l.counter == next;
        self.update_held(
            key,
            owner,
            counter,
            // The request stays, so the new owner knows the lease was handed
            // to it (its take removes it).
            "SET #counter = :next, #owner = :to ADD #switches :one",
            &[("#switches", attr::OWNER_SWITCHES)],
            vec![(":to", s(to)), (":one", n(1))],
            "handing over",
            &landed,
        )
        .await
    }

    /// Asks `lease`'s owner to hand it over to `to` at its next batch
    /// boundary. Changes neither owner nor counter, so the owner's
    /// conditional writes go on; refused when the owner changed or another
    /// worker asked first, unless that request is `stale` (its worker gone).
    ///
    /// # Errors
    /// [`LeaseError::Lost`] when the owner changed or a hand-off is already asked for.
    pub async fn request_handoff(&self, lease: &Lease, to: &str, stale: Option<&str>) -> Result<(), LeaseError> {
        let owner = lease.owner.as_deref().unwrap_or_default();
        let mut request = self
            .client
            .update_item()
            .table_name(&self.name)
            .key(attr::KEY, s(&lease.key))
            .update_expression("SET #handoff = :to")
            .expression_attribute_names("#owner", attr::OWNER)
            .expression_attribute_names("#handoff", attr::HANDOFF_TO)
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":to", s(to));
        request = match stale {
            None => request.condition_expression("#owner = :owner AND attribute_not_exists(#handoff)"),
            Some(stale) => request
                .condition_expression("#owner = :owner AND #handoff = :stale")
                .expression_attribute_values(":stale", s(stale)),
        };
        request.send().await.map_err(|e| classify(e, &lease.key, "asking for"))?;
        Ok(())
    }

    /// Withdraws what `me` asked for and did not take: a hand-off request
    /// still pending, or a lease handed over to it (released, so that any
    /// worker may take it).
    ///
    /// # Errors
    /// The lease moved meanwhile, or the write fails.
    pub async fn withdraw_handoff(&self, lease: &Lease, me: &str) -> Result<(), LeaseError> {
        let request = self
            .client
            .update_item()
            .table_name(&self.name)
            .key(attr::KEY, s(&lease.key))
            .expression_attribute_names("#handoff", attr::HANDOFF_TO)
            .expression_attribute_values(":me", s(me));
        let request = if lease.owner.as_deref() == Some(me) {
            request
                .update_expression("SET #counter = :next REMOVE #owner, #handoff")
                .condition_expression("#handoff = :me AND #counter = :counter")
                .expression_attribute_names("#counter", attr::COUNTER)
                .expression_attribute_values(":counter", n(lease.counter))
                .expression_attribute_values(":next", n(next_counter(&lease.key, lease.counter)?))
        } else {
            request.update_expression("REMOVE #handoff").condition_expression("#handoff = :me")
        };
        request.send().await.map_err(|e| classify(e, &lease.key, "withdrawing"))?;
        Ok(())
    }

    /// An update of a lease conditional on this worker holding it at
    /// `counter`, with the update's own placeholders. `landed` tells, from
    /// the item read back after a refused write, whether the write was in
    /// fact applied (its answer lost, the SDK's retry then refused).
    #[allow(clippy::too_many_arguments)]
    async fn update_held(
        &self,
        key: &str,
        owner: &str,
        counter: u64,
        update: &str,
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
        what: &str,
        landed: &(dyn Fn(&Lease) -> bool + Sync),
    ) -> Result<u64, LeaseError> {
        let next = next_counter(key, counter)?;
        let mut request = self
            .client
            .update_item()
            .table_name(&self.name)
            .key(attr::KEY, s(key))
            .update_expression(update)
            .condition_expression("#owner = :owner AND #counter = :counter")
            .expression_attribute_names("#owner", attr::OWNER)
            .expression_attribute_names("#counter", attr::COUNTER)
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":counter", n(counter))
            .expression_attribute_values(":next", n(next));
        for (placeholder, name) in names {
            request = request.expression_attribute_names(*placeholder, *name);
        }
        for (placeholder, value) in values {
            request = request.expression_attribute_values(placeholder, value);
        }
        match request.send().await.map_err(|e| classify(e, key, what)) {
            Ok(_) => Ok(next),
            // The write may have succeeded and only its answer been lost (the
            // SDK then retries, and the retry fails its condition): read back.
            Err(LeaseError::Lost(_)) if self.read(key).await.is_some_and(|l| landed(&l)) => Ok(next),
            Err(e) => Err(e),
        }
    }

    /// The lease of `key`, read consistently; `None` if it cannot be read.
    async fn read(&self, key: &str) -> Option<Lease> {
        let item =
            self.client.get_item().table_name(&self.name).key(attr::KEY, s(key)).consistent_read(true).send().await;
        item.ok().and_then(|out| out.item).and_then(|item| parse(&item).ok())
    }

    /// Takes a lease seen at `counter` (expired, unowned, or stolen from an
    /// over-loaded worker): the lease as written (its new counter, and the
    /// start time pinned now if it had none). Conditional on the counter
    /// alone, as in the KCL: every change of owner moves it.
    ///
    /// # Errors
    /// [`LeaseError::Lost`] when the lease moved since it was seen.
    pub async fn take(&self, lease: &Lease, owner: &str) -> Result<Lease, LeaseError> {
        let next = next_counter(&lease.key, lease.counter)?;
        let switched = lease.owner.as_deref().is_some_and(|o| o != owner);
        // A LATEST lease from elsewhere (the KCL, or written by hand) gets the
        // time it was first taken, so a later taker does not skip what came in
        // between.
        let pin_start = lease.checkpoint == "LATEST" && lease.start_timestamp_ms.is_none();
        let update = match (switched, pin_start) {
            (true, false) => "SET #owner = :owner, #counter = :next ADD #switches :one REMOVE #handoff",
            (false, false) => "SET #owner = :owner, #counter = :next REMOVE #handoff",
            (true, true) => {
                "SET #owner = :owner, #counter = :next, #start = if_not_exists(#start, :now) ADD #switches :one \
                 REMOVE #handoff"
            }
            (false, true) => {
                "SET #owner = :owner, #counter = :next, #start = if_not_exists(#start, :now) REMOVE #handoff"
            }
        };
        let mut request = self
            .client
            .update_item()
            .table_name(&self.name)
            .key(attr::KEY, s(&lease.key))
            .update_expression(update)
            .condition_expression("#counter = :counter")
            .expression_attribute_names("#owner", attr::OWNER)
            .expression_attribute_names("#counter", attr::COUNTER)
            .expression_attribute_names("#handoff", attr::HANDOFF_TO)
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":counter", n(lease.counter))
            .expression_attribute_values(":next", n(next));
        if switched {
            request = request
                .expression_attribute_names("#switches", attr::OWNER_SWITCHES)
                .expression_attribute_values(":one", n(1));
        }
        if pin_start {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            request = request
                .expression_attribute_names("#start", attr::START_TIMESTAMP)
                .expression_attribute_values(":now", AttributeValue::N(now.as_millis().to_string()));
        }
        let written = request
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| classify(e, &lease.key, "taking"))?;
        let taken =
            written.attributes().map(parse).transpose().map_err(|m| LeaseError::Other(anyhow::anyhow!("{m}")))?;
        // An answer without the item (a store that ignores ReturnValues): what was written.
        Ok(taken.unwrap_or_else(|| Lease { owner: Some(owner.to_owned()), counter: next, ..lease.clone() }))
    }

    /// Deletes a finished lease (checkpoint `SHARD_END`); whether it did
    /// (another worker may have first).
    ///
    /// # Errors
    /// The write fails.
    pub async fn delete_finished(&self, key: &str) -> anyhow::Result<bool> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.name)
            .key(attr::KEY, s(key))
            .condition_expression("#checkpoint = :end")
            .expression_attribute_names("#checkpoint", attr::CHECKPOINT)
            .expression_attribute_values(":end", s(SHARD_END))
            .send()
            .await;
        match deleted.map_err(|e| classify(e, key, "deleting")) {
            Ok(_) => Ok(true),
            Err(LeaseError::Lost(_)) => Ok(false),
            Err(LeaseError::Other(e)) => Err(e),
        }
    }

    /// Records the children of a closed shard on its lease (metadata only:
    /// no counter change, as the KCL does).
    ///
    /// # Errors
    /// The write fails.
    pub async fn set_children(&self, key: &str, children: &[String]) -> anyhow::Result<()> {
        self.client
            .update_item()
            .table_name(&self.name)
            .key(attr::KEY, s(key))
            .update_expression("SET #children = :children")
            .condition_expression("attribute_exists(#key)")
            .expression_attribute_names("#children", attr::CHILDREN)
            .expression_attribute_names("#key", attr::KEY)
            .expression_attribute_values(":children", AttributeValue::Ss(children.to_vec()))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("recording the children of {key}: {}", explain(&e)))?;
        Ok(())
    }
}

/// `counter + 1`; a counter at its maximum (a hostile or broken item) is an error.
fn next_counter(key: &str, counter: u64) -> Result<u64, LeaseError> {
    counter
        .checked_add(1)
        .ok_or_else(|| LeaseError::Other(anyhow::anyhow!("the lease counter of {key} is at its maximum")))
}

/// A lease table as scanned.
#[derive(Debug, Default)]
pub struct Scanned {
    pub leases: Vec<Lease>,
    /// Items offerd cannot use: nobody takes them, so their shards go
    /// unserved until someone repairs them.
    pub malformed: Vec<Malformed>,
}

/// An item of the lease table that is not a usable lease, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the lease item {key}: {why}")]
pub struct Malformed {
    /// Its `leaseKey`, or `(no leaseKey)`.
    pub key: String,
    pub why: String,
}

/// An item read back; unknown attributes are ignored (the KCL's newer
/// ones). Attributes offerd relies on must have their type and range: a
/// counter stored as a string would read as 0 and make every take fail, and
/// a lease that was held but has no checkpoint would be read again from the
/// start.
fn parse(item: &HashMap<String, AttributeValue>) -> Result<Lease, Malformed> {
    let string = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
    let key = string(attr::KEY);
    let malformed = |why: String| Malformed { key: key.clone().unwrap_or_else(|| "(no leaseKey)".into()), why };
    let Some(key) = key.clone() else { return Err(malformed("the item has no string leaseKey".into())) };
    let number = |name: &str| -> Result<Option<u64>, Malformed> {
        match item.get(name) {
            None => Ok(None),
            Some(AttributeValue::N(v)) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| malformed(format!("{name} = {v} is not a counter (0 to 2^64-1)"))),
            Some(other) => Err(malformed(format!("{name} is {}, not a number", kind(other)))),
        }
    };
    let set = |name: &str| item.get(name).and_then(|v| v.as_ss().ok()).cloned().unwrap_or_default();
    let owner = string(attr::OWNER);
    let counter = number(attr::COUNTER)?.unwrap_or(0);
    let owner_switches = number(attr::OWNER_SWITCHES)?.unwrap_or(0);
    let checkpoint = match item.get(attr::CHECKPOINT) {
        Some(AttributeValue::S(checkpoint)) => checkpoint.clone(),
        Some(other) => return Err(malformed(format!("checkpoint is {}, not a string", kind(other)))),
        // Never held: a lease created by hand without a position starts at the trim horizon.
        None if owner.is_none() && counter == 0 && owner_switches == 0 => "TRIM_HORIZON".to_owned(),
        None => {
            return Err(malformed(format!(
                "no checkpoint on a lease that was held (counter {counter}): reading its shard from the start                  would repeat it"
            )));
        }
    };
    Ok(Lease {
        owner,
        counter,
        checkpoint,
        sub_sequence: number(attr::SUB_SEQUENCE)?.unwrap_or(0),
        owner_switches,
        parents: set(attr::PARENTS),
        children: set(attr::CHILDREN),
        hash_keys: string(attr::STARTING_HASH_KEY).zip(string(attr::ENDING_HASH_KEY)),
        start_timestamp_ms: item.get(attr::START_TIMESTAMP).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()),
        handoff_to: string(attr::HANDOFF_TO),
        key,
    })
}

/// A DynamoDB attribute's type, for messages.
fn kind(value: &AttributeValue) -> &'static str {
    match value {
        AttributeValue::S(_) => "a string",
        AttributeValue::N(_) => "a number",
        AttributeValue::B(_) => "binary",
        AttributeValue::Bool(_) => "a boolean",
        AttributeValue::Null(_) => "null",
        AttributeValue::L(_) => "a list",
        AttributeValue::M(_) => "a map",
        AttributeValue::Ss(_) | AttributeValue::Ns(_) | AttributeValue::Bs(_) => "a set",
        _ => "of an unknown type",
    }
}
