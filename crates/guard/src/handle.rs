//! A guard many tasks share: a cheap, cloneable handle over a [`Scheduler`], whose checks from
//! every caller batch together in the scheduler.

use std::sync::Arc;

use guardreasoner_engine::schedule::{validate, Events, Rejected, Scheduler};
use guardreasoner_engine::{EngineError, Generation, SamplingParams};
use guardreasoner_protocol::Conversation;

use crate::{CheckResult, GuardConfig, GuardError};

/// Why checks were not queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// A conversation cannot run: its prompt does not fit, or the parameters are invalid, or it
    /// cannot be rendered. Nothing was queued.
    #[error(transparent)]
    Invalid(#[from] GuardError),
    /// The scheduler refused the group (a full queue, or stopped). Nothing was queued.
    #[error(transparent)]
    Rejected(#[from] Rejected),
}

/// A guard over a shared scheduler; clone it into every task.
#[derive(Clone)]
pub struct GuardHandle {
    scheduler: Arc<dyn Scheduler>,
    config: Arc<GuardConfig>,
}

impl GuardHandle {
    /// A guard checking with `config` on `scheduler`.
    pub fn new(scheduler: Arc<dyn Scheduler>, config: GuardConfig) -> Self {
        Self {
            scheduler,
            config: Arc::new(config),
        }
    }

    /// The scheduler, for raw generation beside checks.
    pub fn scheduler(&self) -> &Arc<dyn Scheduler> {
        &self.scheduler
    }

    /// The guard's configuration.
    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// Renders and validates every conversation, then queues them together (all or none); the
    /// events of conversation `i` come back tagged `i`. `params` overrides the guard's sampling.
    pub fn submit(
        &self,
        conversations: &[Conversation],
        params: Option<&SamplingParams>,
        events: Events,
    ) -> Result<(), SubmitError> {
        let params = params.unwrap_or(&self.config.params);
        let requests = conversations
            .iter()
            .enumerate()
            .map(|(index, conversation)| {
                let prompt = self
                    .config
                    .render(conversation, self.scheduler.chat_template())?;
                let request = validate(
                    self.scheduler.as_ref(),
                    index,
                    prompt,
                    self.config.shared_prefix(),
                    params.clone(),
                )
                .map_err(GuardError::Engine)?;
                Ok((index, request))
            })
            .collect::<Result<Vec<_>, GuardError>>()?;
        self.scheduler.submit_all(requests, events)?;
        Ok(())
    }

    /// Turns a finished generation into the verdict under the guard's policy.
    pub fn judge(
        &self,
        conversation: &Conversation,
        generation: Result<Generation, EngineError>,
    ) -> Result<CheckResult, GuardError> {
        self.config.judge(conversation, generation?)
    }
}
