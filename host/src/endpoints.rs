//! How the HTTP endpoints are reached: per-role endpoint and key overrides, rate limits,
//! concurrency, and whether the response cache is used (flags, or the same keys in the config
//! file).

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::bindings::types::Role;
use crate::provider::openai::RetryPolicy;
use crate::provider::rate::RateLimit;

/// Endpoint settings of a run.
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointFlags {
    /// Requests per minute to each HTTP endpoint at most (retries count).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Tokens (prompt plus completion, from the replies' usage) per minute to each HTTP
    /// endpoint at most.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight to each HTTP endpoint at most (default 16).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<usize>,
    /// Size of one HTTP reply's body, in MiB (default 4); a larger reply fails its request
    /// (not retried) and is read no further.
    #[arg(long, value_name = "MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_reply_mib: Option<u64>,
    /// Size of the answers (every choice) of one batch's requests to one HTTP endpoint, in
    /// MiB (default 64); the answers past it fail their requests.
    #[arg(long, value_name = "MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_answers_mib: Option<u64>,
    /// Neither read nor write the persistent response cache ($DRPO_CACHE_DIR/responses.redb).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
    /// Skip the preflight: the small request that checks each remote model before the search
    /// spends anything, and settles how its server is reached (these are then settled on the
    /// first refusal instead).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_preflight: bool,
    /// Endpoint of the base role's model, overriding --api-base.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_api_base: Option<String>,
    /// Endpoint of the metrics role's model, overriding --api-base.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_api_base: Option<String>,
    /// Endpoint of the judge's model (--eval-model-name), overriding --api-base.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_api_base: Option<String>,
    /// Endpoint of the optimizer's model, overriding --api-base.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimize_api_base: Option<String>,
    /// Name of the environment variable holding the base role's API key (default
    /// OPENAI_API_KEY); the key itself is never written anywhere.
    #[arg(long, value_name = "VAR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_api_key_env: Option<String>,
    /// Name of the environment variable holding the metrics role's API key.
    #[arg(long, value_name = "VAR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_api_key_env: Option<String>,
    /// Name of the environment variable holding the judge's API key.
    #[arg(long, value_name = "VAR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_api_key_env: Option<String>,
    /// Name of the environment variable holding the optimizer's API key.
    #[arg(long, value_name = "VAR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimize_api_key_env: Option<String>,
}

impl EndpointFlags {
    /// The retry policy of every HTTP endpoint.
    pub fn retry_policy(&self) -> RetryPolicy {
        let defaults = RetryPolicy::default();
        let bytes =
            |mib: Option<u64>, default: u64| mib.map_or(default, |mib| mib.saturating_mul(1 << 20));
        RetryPolicy {
            concurrency: self.max_concurrency.unwrap_or(defaults.concurrency),
            max_reply_bytes: bytes(self.max_reply_mib, defaults.max_reply_bytes),
            max_answers_bytes: bytes(self.max_answers_mib, defaults.max_answers_bytes),
            ..defaults
        }
    }

    /// The rate limits of every HTTP endpoint.
    pub fn rate_limit(&self) -> RateLimit {
        RateLimit::per_minute(self.requests_per_minute, self.tokens_per_minute)
    }

    /// The endpoint and key variable overriding the defaults for `role`'s model (`None`: the
    /// embedding model, which has no overrides).
    pub fn for_role(&self, role: Option<Role>) -> (Option<&str>, Option<&str>) {
        let (base, key) = match role {
            Some(Role::Base) => (&self.base_api_base, &self.base_api_key_env),
            Some(Role::Metrics) => (&self.metrics_api_base, &self.metrics_api_key_env),
            Some(Role::Judge) => (&self.eval_api_base, &self.eval_api_key_env),
            Some(Role::Optimizer) => (&self.optimize_api_base, &self.optimize_api_key_env),
            None => (&None, &None),
        };
        (base.as_deref(), key.as_deref())
    }
}
