//! Conversations in, verdicts out: the pipeline `/v1/guard`, `/v1/moderations` and the LiteLLM
//! endpoint share. Validation and queueing are the guard handle's; this waits for the events
//! within the request's deadline. Dropping the future (a client that went away) drops the
//! receiver, which cancels the sequences and frees their slots.

use axum::http::StatusCode;
use guardreasoner_engine::schedule::{events, Event, EventReceiver};
use guardreasoner_engine::SamplingParams;
use guardreasoner_guard::{CheckResult, DecidedBy, GuardError, GuardHandle};
use guardreasoner_protocol::Conversation;

use crate::error::ApiError;
use crate::state::AppState;

/// One conversation's verdict, or why it has none.
pub type ItemResult = Result<CheckResult, GuardError>;

/// Queues `conversations` (all or none) and returns the guard and the receiver of their events.
/// `params` overrides the guard's sampling; `overload` is the status for a full queue; `field`
/// names the request's list in errors. Rendering and tokenizing run on a blocking thread: a long
/// conversation (a 1 MB word takes about half a second) must not hold up the runtime's workers,
/// which answer everyone else.
pub async fn submit(
    state: &AppState,
    conversations: &[Conversation],
    params: Option<&SamplingParams>,
    overload: StatusCode,
    field: &str,
) -> Result<(GuardHandle, EventReceiver), ApiError> {
    if conversations.is_empty() {
        return Err(ApiError::bad_request("nothing to check").with_param(field));
    }
    if conversations.len() > state.config.max_items {
        return Err(ApiError::unprocessable(format!(
            "{} items; this server takes at most {} per request",
            conversations.len(),
            state.config.max_items
        ))
        .with_param(field));
    }
    let guard = state.guard()?.clone();
    let (sender, receiver) = events();
    let (queued, conversations, params) = (guard.clone(), conversations.to_vec(), params.cloned());
    tokio::task::spawn_blocking(move || queued.submit(&conversations, params.as_ref(), sender))
        .await
        .map_err(|e| ApiError::internal(format!("the validating thread failed: {e}")))?
        .map_err(|error| ApiError::from_submit(&error, overload, field))?;
    Ok((guard, receiver))
}

/// Turns a finished sequence into its verdict, counting what the metrics count.
pub fn judge(
    state: &AppState,
    guard: &GuardHandle,
    conversation: &Conversation,
    finished: Result<guardreasoner_engine::Generation, guardreasoner_engine::EngineError>,
) -> ItemResult {
    if let Ok(generation) = &finished {
        state.metrics.generation(generation);
    }
    let verdict = guard.judge(conversation, finished);
    match &verdict {
        Ok(result) if result.decided_by == DecidedBy::Policy => state.metrics.parse_failure(),
        Err(GuardError::Unparseable { .. }) => state.metrics.parse_failure(),
        _ => {}
    }
    verdict
}

/// Checks every conversation and waits for all verdicts, in order, within the deadline.
pub async fn check_all(
    state: &AppState,
    conversations: &[Conversation],
    params: Option<&SamplingParams>,
    overload: StatusCode,
    field: &str,
) -> Result<Vec<ItemResult>, ApiError> {
    let (guard, mut receiver) = submit(state, conversations, params, overload, field).await?;
    let mut verdicts: Vec<Option<ItemResult>> = conversations.iter().map(|_| None).collect();
    let mut left = conversations.len();
    let limit = state.config.request_timeout;
    let wait = async {
        while left > 0 {
            match receiver.recv().await {
                Some((index, Event::Finished(finished))) => {
                    verdicts[index] = Some(judge(state, &guard, &conversations[index], finished));
                    left -= 1;
                }
                Some((_, Event::Token { .. })) => {}
                None => return Err(ApiError::internal("the scheduler stopped")),
            }
        }
        Ok(())
    };
    tokio::time::timeout(limit, wait)
        .await
        .map_err(|_| ApiError::deadline(limit))??;
    Ok(verdicts.into_iter().flatten().collect())
}
