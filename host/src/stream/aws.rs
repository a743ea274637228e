//! Builds AWS clients from the standard chain (`AWS_REGION`, credentials,
//! `AWS_ENDPOINT_URL`), failing fast with what to set instead of stalling on
//! the instance metadata service.

use std::time::Duration;

use anyhow::{Context, bail};
use aws_config::BehaviorVersion;
use aws_sdk_kinesis::config::ProvideCredentials;

/// Longest wait for credentials: on a machine without any, the chain ends at
/// the instance metadata service, which can stall for many seconds.
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(3);

/// # Errors
/// No region, or no credentials within [`CREDENTIALS_TIMEOUT`].
pub async fn kinesis_client() -> anyhow::Result<aws_sdk_kinesis::Client> {
    let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
    if config.region().is_none() {
        bail!("no AWS region: set AWS_REGION (or a profile with a region)");
    }
    let Some(provider) = config.credentials_provider() else {
        bail!("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE");
    };
    tokio::time::timeout(CREDENTIALS_TIMEOUT, provider.provide_credentials())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no AWS credentials after {CREDENTIALS_TIMEOUT:?}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            )
        })?
        .context("no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")?;
    Ok(aws_sdk_kinesis::Client::new(&config))
}
