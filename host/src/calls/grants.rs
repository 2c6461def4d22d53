//! What a plugin is allowed to ask of the models: the roles granted to it (`--allow-roles`) and
//! how many model requests it may make (`--max-plugin-calls`). A request outside its grant never
//! reaches a provider: it is answered `rejected` (a role) or `budget-exhausted` (the call cap),
//! and that answer is recorded in the run log like any other, so a replay reproduces it.
//!
//! The call cap is a capability of the plugin, counted in requests whatever they cost; budgets
//! on calls, tokens or money for the whole run are a separate matter.

use anyhow::bail;

use crate::bindings::types::{LlmError, Request, Role};
use crate::roles::PerRole;
use crate::runlog::{CallRecord, CallRequest, CallResponse};

/// A plugin's grant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// The roles the plugin may call; `None`: all of them.
    roles: Option<Vec<Role>>,
    /// The most model requests (`complete` requests and `embed` calls); `None`: no cap.
    max_calls: Option<u64>,
}

impl Grants {
    /// The grant of `--allow-roles` (`allow_roles`; `None`: every role) and
    /// `--max-plugin-calls` (`max_calls`). Role names are checked here, so a typo fails before
    /// the run starts.
    pub fn new(allow_roles: Option<&[String]>, max_calls: Option<u64>) -> anyhow::Result<Grants> {
        let roles = match allow_roles {
            None => None,
            Some(names) => {
                let mut roles = Vec::new();
                for name in names {
                    let name = name.trim();
                    match Role::named(name) {
                        Some(role) if !roles.contains(&role) => roles.push(role),
                        Some(_) => {}
                        None => bail!(
                            "--allow-roles: unknown role `{name}`; the roles are base, metrics, \
                             judge and optimizer"
                        ),
                    }
                }
                Some(roles)
            }
        };
        Ok(Grants { roles, max_calls })
    }

    /// Whether the grant limits anything.
    pub fn is_unlimited(&self) -> bool {
        self.roles.is_none() && self.max_calls.is_none()
    }

    /// Whether the plugin may call `role`.
    pub fn allows(&self, role: Role) -> bool {
        self.roles
            .as_ref()
            .is_none_or(|roles| roles.contains(&role))
    }

    /// Why `request` may not run, given `used` requests so far; `None` when it may.
    pub fn refuse(&self, request: &Request, used: u64) -> Option<LlmError> {
        if !self.allows(request.role) {
            return Some(LlmError::Rejected(format!(
                "role {} is not granted to this plugin (--allow-roles {})",
                request.role.name(),
                self.role_list()
            )));
        }
        self.refuse_call(used)
    }

    /// Whether one more model call (an `embed`, or a request of any role) fits the call cap.
    pub fn refuse_call(&self, used: u64) -> Option<LlmError> {
        match self.max_calls {
            Some(max) if used >= max => Some(LlmError::BudgetExhausted),
            _ => None,
        }
    }

    fn role_list(&self) -> String {
        match &self.roles {
            None => "all roles".into(),
            Some(roles) if roles.is_empty() => "none".into(),
            Some(roles) => roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(","),
        }
    }

    /// One line for `drpo-host inspect`.
    pub fn describe(&self) -> String {
        let calls = match self.max_calls {
            Some(max) => format!("at most {max} model calls"),
            None => "no call cap".into(),
        };
        format!("roles {}; {calls}", self.role_list())
    }
}

/// How many model requests a call record holds, for the call cap: each request of a `complete`
/// batch, and an `embed` call.
pub fn model_requests(request: &CallRequest) -> u64 {
    match request {
        CallRequest::Complete(batch) => batch.len() as u64,
        CallRequest::Embed(_) => 1,
        _ => 0,
    }
}

/// The roles a run used (each with its request count) and the requests its grant refused, as
/// `drpo-host inspect` shows them.
pub fn usage_lines(grants: &Grants, calls: &[CallRecord]) -> Vec<String> {
    let mut used = PerRole::<u64>::default();
    let mut rejected = Vec::new();
    let mut capped = 0u64;
    for call in calls {
        let (CallRequest::Complete(batch), CallResponse::Complete(results)) =
            (&call.request, &call.response)
        else {
            continue;
        };
        for (request, result) in batch.iter().zip(results) {
            used[request.role] += 1;
            match result {
                Err(LlmError::Rejected(why)) if why.contains("--allow-roles") => {
                    rejected.push(format!("call {}: {why}", call.index));
                }
                Err(LlmError::BudgetExhausted) => capped += 1,
                _ => {}
            }
        }
    }
    let roles: Vec<String> = used
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{} ({n})", r.name()))
        .collect();
    let mut lines = vec![
        format!(
            "roles used     {}",
            if roles.is_empty() {
                "none".into()
            } else {
                roles.join(", ")
            }
        ),
        format!("granted        {}", grants.describe()),
    ];
    if !rejected.is_empty() {
        lines.push(format!("refused        {} request(s)", rejected.len()));
        lines.extend(rejected.into_iter().map(|r| format!("  {r}")));
    }
    if capped > 0 {
        lines.push(format!("budget-exhausted answers  {capped}"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::chat_request;

    fn grants(roles: Option<&str>, max: Option<u64>) -> anyhow::Result<Grants> {
        let roles: Option<Vec<String>> = roles.map(|r| r.split(',').map(str::to_owned).collect());
        Grants::new(roles.as_deref(), max)
    }

    fn request(role: Role) -> Request {
        chat_request(role, "hi")
    }

    #[test]
    fn a_role_outside_the_grant_is_rejected_with_the_grant_named() {
        let grants = grants(Some("judge,optimizer"), None).unwrap();
        assert_eq!(grants.refuse(&request(Role::Judge), 0), None);
        let Some(LlmError::Rejected(why)) = grants.refuse(&request(Role::Base), 0) else {
            panic!("base is not granted")
        };
        assert_eq!(
            why,
            "role base is not granted to this plugin (--allow-roles judge,optimizer)"
        );
    }

    #[test]
    fn the_call_cap_answers_budget_exhausted_once_spent() {
        let capped = grants(None, Some(2)).unwrap();
        assert_eq!(capped.refuse(&request(Role::Base), 1), None);
        assert_eq!(
            capped.refuse(&request(Role::Base), 2),
            Some(LlmError::BudgetExhausted)
        );
        assert!(grants(None, None).unwrap().is_unlimited());
    }

    #[test]
    fn unknown_role_names_fail_before_the_run() {
        let error = grants(Some("judge,optimiser"), None).unwrap_err();
        assert!(
            error.to_string().contains("unknown role `optimiser`"),
            "{error}"
        );
    }
}
