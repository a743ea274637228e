//! Builds AWS clients from the standard chain (`AWS_REGION`, credentials,
//! `AWS_ENDPOINT_URL`), failing fast with what to set instead of stalling on
//! the instance metadata service.

use std::time::Duration;

use anyhow::{Context, bail};
use aws_config::BehaviorVersion;
use aws_sdk_kinesis::config::ProvideCredentials;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};

/// Longest wait for credentials: on a machine without any, the chain ends at
/// the instance metadata service, which can stall for many seconds.
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(3);

/// The SDK configuration every client is built from.
///
/// # Errors
/// No region, or no credentials within [`CREDENTIALS_TIMEOUT`].
pub async fn sdk_config() -> anyhow::Result<aws_config::SdkConfig> {
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
    Ok(config)
}

/// An SDK error in one line: a service error's code and message, or the
/// whole chain of causes of a transport error. (The SDK's own `Display` says
/// only "service error"; its full context dumps the raw response.)
pub(crate) fn explain<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(s) => {
            format!("{}: {}", s.err().code().unwrap_or("service error"), s.err().message().unwrap_or("(no message)"))
        }
        other => aws_sdk_kinesis::error::DisplayErrorContext(other).to_string(),
    }
}
