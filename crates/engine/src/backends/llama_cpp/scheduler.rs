//! Continuous batching on one llama.cpp context, on the thread that owns it.
//!
//! The context holds `slots` sequences, each in a KV stream of its own (as llama-server's slots:
//! a sequence attends over its own cells only, however many run beside it). A slot keeps the
//! cells of the prompt it last ran. Every step the scheduler
//! 1. drops cancelled sequences (their receiver is gone) and frees their slots;
//! 2. admits waiting requests into free slots, each into the free slot whose kept prompt shares
//!    the longest start with it (GuardReasoner's instruction, a chat's system prompt): those
//!    tokens are reused as they are (up to the request's hinted shared prefix, when it has one),
//!    the rest is left to prefill. Where another slot holds a longer shared start, its cells are
//!    copied into the new slot first (a buffer copy, milliseconds, instead of a prefill); a
//!    request whose shared start another slot is evaluating right now waits a step for it, so
//!    that a batch of guard checks evaluates the instruction once;
//! 3. decodes one batch: the next token of every decoding sequence, then prefill tokens of the
//!    admitted ones, oldest first, up to `step_tokens` (chunked prefill: running sequences never
//!    wait for a long prompt to finish);
//! 4. samples where logits were asked for, streams the text, and evicts what finished at once,
//!    sending each request its own events.

use std::collections::VecDeque;
use std::sync::mpsc::{self, TryRecvError};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use guardreasoner_protocol::Prompt;

use super::vocabulary::LlamaVocabulary;
use super::{backend_error, BACKEND};
use crate::error::EngineError;
use crate::generate::{Generation, SamplingParams, StopReason, Timings, Utf8Stream};
use crate::schedule::{fits, Event, Events, Job, QueueGauge};

/// The scheduler's sizes, fixed when the context is made.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    /// Tokens one sequence may hold.
    pub context_per_sequence: usize,
    /// Sequences that run together.
    pub slots: usize,
    /// Tokens one decode call may carry.
    pub step_tokens: usize,
}

/// Runs until the queue is closed and every running sequence has finished.
pub(super) fn run<'m>(
    model: &'m LlamaModel,
    vocabulary: &'m LlamaVocabulary,
    context: LlamaContext<'m>,
    settings: Settings,
    gauge: &'m QueueGauge,
    jobs: mpsc::Receiver<Vec<Job>>,
) {
    let mut scheduler = Steps {
        model,
        vocabulary,
        gauge,
        context,
        settings,
        slots: (0..settings.slots).map(|_| None).collect(),
        admitted: VecDeque::new(),
        kept: vec![Vec::new(); settings.slots],
        hint: None,
        batch: LlamaBatch::new(settings.step_tokens, 1),
    };
    // Received but not admitted yet, in order.
    let mut backlog: VecDeque<Job> = VecDeque::new();
    let mut open = true;
    loop {
        scheduler.drop_cancelled();
        // Take what has arrived; wait for work only when nothing runs or waits.
        loop {
            let group = if scheduler.running() == 0 && backlog.is_empty() && open {
                jobs.recv().map_err(|_| TryRecvError::Disconnected)
            } else if open {
                jobs.try_recv()
            } else {
                break;
            };
            match group {
                Ok(group) => backlog.extend(group),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        while scheduler.free_slot().is_some() {
            let Some(job) = backlog.front() else {
                break;
            };
            if scheduler.prefix_in_progress(job) {
                break;
            }
            let Some(job) = backlog.pop_front() else {
                break;
            };
            gauge.leave(1);
            scheduler.admit(job);
        }
        if scheduler.running() == 0 {
            if open || !backlog.is_empty() {
                continue;
            }
            return;
        }
        scheduler.step();
    }
}

/// One request in a slot.
struct Sequence {
    tag: usize,
    events: Events,
    params: SamplingParams,
    /// llama.cpp's sampler chain; `None` for greedy decoding, which takes the argmax itself.
    sampler: Option<LlamaSampler>,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens reused from the slot's last prompt.
    cached: usize,
    /// Prompt tokens in the cache so far (reused or evaluated).
    evaluated: usize,
    /// The token to feed next, once prefill is done.
    next: Option<LlamaToken>,
    utf8: Utf8Stream,
    text: String,
    token_ids: Vec<u32>,
    logprobs: Option<Vec<f32>>,
    stop: Option<StopReason>,
    queued_at: Instant,
    admitted_at: Instant,
    first_token_at: Option<Instant>,
}

impl Sequence {
    /// The position of the token to feed next (`next`): after the prompt, one per token generated
    /// before it.
    fn position(&self) -> usize {
        self.prompt.len() + self.token_ids.len().saturating_sub(1)
    }
}

struct Steps<'m> {
    model: &'m LlamaModel,
    /// Tokenizes what arrives untokenized (a hint; a request validation did not count).
    vocabulary: &'m LlamaVocabulary,
    gauge: &'m QueueGauge,
    context: LlamaContext<'m>,
    settings: Settings,
    /// Slot `i` is llama.cpp sequence `i`.
    slots: Vec<Option<Sequence>>,
    /// Slots in the order their requests were admitted: prefill goes oldest first.
    admitted: VecDeque<usize>,
    /// The prompt tokens each slot's cache holds from its last sequence.
    kept: Vec<Vec<LlamaToken>>,
    /// The last shared-prefix hint and its tokens (tokenized once).
    hint: Option<(Prompt, Vec<LlamaToken>)>,
    batch: LlamaBatch<'static>,
}

/// The fewest shared tokens worth copying another slot's cells for (the copy moves the whole
/// stream; below this, evaluating them costs about as much).
const MIN_COPY: usize = 16;

fn sequence_id(slot: usize) -> i32 {
    slot as i32
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn sampler_for(params: &SamplingParams) -> Option<LlamaSampler> {
    if params.is_greedy() {
        return None;
    }
    Some(LlamaSampler::chain_simple([
        LlamaSampler::top_p(params.top_p, 1),
        LlamaSampler::temp(params.temperature),
        LlamaSampler::dist(params.seed as u32),
    ]))
}

impl Steps<'_> {
    fn running(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.is_none())
    }

    /// The prompt tokens slot `slot`'s cache holds: a running sequence's evaluated prompt, or a
    /// free slot's kept one.
    fn held(&self, slot: usize) -> &[LlamaToken] {
        match &self.slots[slot] {
            Some(sequence) => &sequence.prompt[..sequence.evaluated],
            None => &self.kept[slot],
        }
    }

    /// The tokens of the request's hinted shared prefix its prompt starts with (`usize::MAX`
    /// without a hint: no bound).
    fn reuse_limit(&mut self, shared_prefix: Option<&Prompt>, prompt: &[LlamaToken]) -> usize {
        match shared_prefix {
            Some(hint) => {
                if self.hint.as_ref().is_none_or(|(text, _)| text != hint) {
                    // A hint that cannot be tokenized allows no reuse (never more than it says).
                    let tokens = self.vocabulary.tokens(hint).unwrap_or_default();
                    self.hint = Some((hint.clone(), tokens));
                }
                let hinted = self.hint.as_ref().map_or(&[][..], |(_, t)| t.as_slice());
                common_prefix(hinted, prompt)
            }
            None => usize::MAX,
        }
    }

    /// Whether `job`'s hinted shared prefix is being evaluated by a running sequence right now
    /// and no slot holds it yet: admitted a step later, it copies those cells instead of
    /// evaluating them again.
    fn prefix_in_progress(&mut self, job: &Job) -> bool {
        let (Some(hint), Some(ids)) = (job.request.shared_prefix.as_ref(), &job.request.tokens)
        else {
            return false;
        };
        let prompt: Vec<LlamaToken> = ids.iter().map(|&id| LlamaToken(id as i32)).collect();
        let limit = self.reuse_limit(Some(hint), &prompt);
        if limit < MIN_COPY {
            return false;
        }
        let held = (0..self.slots.len())
            .map(|slot| common_prefix(self.held(slot), &prompt))
            .max()
            .unwrap_or(0);
        held < limit
            && self.slots.iter().flatten().any(|sequence| {
                sequence.evaluated < limit && common_prefix(&sequence.prompt, &prompt) >= limit
            })
    }

    fn drop_cancelled(&mut self) {
        for slot in 0..self.slots.len() {
            if self.slots[slot]
                .as_ref()
                .is_some_and(|s| s.events.is_closed())
            {
                self.release(slot);
            }
        }
    }

    /// Frees a slot; its cache keeps the prompt for the next sequence that starts the same way.
    fn release(&mut self, slot: usize) -> Option<Sequence> {
        self.kept[slot] = self.slots[slot]
            .as_ref()
            .map(|s| s.prompt[..s.evaluated].to_vec())
            .unwrap_or_default();
        self.admitted.retain(|&s| s != slot);
        let sequence = self.slots[slot].take();
        // Before the sequence's last event goes out, so that its receiver sees the slot free.
        self.gauge.set_running(self.running());
        sequence
    }

    /// Forgets what a slot's cache holds (after a failed step).
    fn wipe(&mut self, slot: usize) {
        self.kept[slot].clear();
        let _ = self
            .context
            .clear_kv_cache_seq(Some(sequence_id(slot) as u32), None, None);
    }

    /// Puts a request into a free slot, or fails it at once when it cannot run.
    fn admit(&mut self, job: Job) {
        if job.events.is_closed() {
            return;
        }
        let admitted_at = Instant::now();
        let prompt = match &job.request.tokens {
            Some(ids) => ids.iter().map(|&id| LlamaToken(id as i32)).collect(),
            None => match self.vocabulary.tokens(&job.request.prompt) {
                Ok(tokens) => tokens,
                Err(error) => {
                    let _ = job.events.send((job.tag, Event::Finished(Err(error))));
                    return;
                }
            },
        };
        if let Err(error) = fits(job.tag, prompt.len(), self.settings.context_per_sequence) {
            let _ = job.events.send((job.tag, Event::Finished(Err(error))));
            return;
        }
        // A hinted prefix bounds the reuse: the rest of the prompt is evaluated as it would be
        // from scratch, so a guard's output does not depend on what the slot held before.
        // Without a hint, everything the slot holds of the prompt's start is reused (as
        // llama-server's prompt cache does).
        let limit = self.reuse_limit(job.request.shared_prefix.as_ref(), &prompt);
        // The free slot whose kept prompt shares the longest start (the first on ties); the
        // last prompt token is always evaluated, for the logits of the first new token.
        let Some((slot, shared)) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_none())
            .map(|(slot, _)| (slot, common_prefix(&self.kept[slot], &prompt).min(limit)))
            .rev()
            .max_by_key(|&(_, shared)| shared)
        else {
            unreachable!("admit is called only with a free slot");
        };
        // Another slot holding a longer start lends its cells: llama.cpp copies that slot's KV
        // stream into this one at the next decode, and the cells past the shared start are
        // dropped below.
        let donor = (0..self.slots.len())
            .filter(|&other| other != slot)
            .map(|other| (other, common_prefix(self.held(other), &prompt).min(limit)))
            .max_by_key(|&(_, shared)| shared);
        let mut shared = shared;
        if let Some((other, longer)) = donor.filter(|&(_, longer)| longer >= shared + MIN_COPY) {
            let copied =
                self.context
                    .copy_kv_cache_seq(sequence_id(other), sequence_id(slot), None, None);
            if copied.is_ok() {
                self.kept[slot] = self.held(other)[..longer].to_vec();
                shared = longer;
            }
        }
        let cached = shared.min(prompt.len() - 1);
        let cleared = self.context.clear_kv_cache_seq(
            Some(sequence_id(slot) as u32),
            Some(cached as u32),
            None,
        );
        if let Err(error) = cleared {
            self.wipe(slot);
            let error = EngineError::backend_caused(
                BACKEND,
                "cannot clear the slot's cache for a new prompt",
                error,
            );
            let _ = job.events.send((job.tag, Event::Finished(Err(error))));
            return;
        }
        self.kept[slot].truncate(cached);
        let params = job.request.params;
        self.slots[slot] = Some(Sequence {
            tag: job.tag,
            events: job.events,
            sampler: sampler_for(&params),
            logprobs: params.logprobs.then(Vec::new),
            params,
            prompt,
            cached,
            evaluated: cached,
            next: None,
            utf8: Utf8Stream::default(),
            text: String::new(),
            token_ids: Vec::new(),
            stop: None,
            queued_at: job.queued_at,
            admitted_at,
            first_token_at: None,
        });
        self.admitted.push_back(slot);
        self.gauge.set_running(self.running());
    }

    /// One decode call: a token of every decoding sequence, then prefill, oldest first.
    fn step(&mut self) {
        self.batch.clear();
        // (slot, index of its logits in the batch) for every sequence that samples this step.
        let mut sampling: Vec<(usize, i32)> = Vec::new();
        let mut added = Ok(());
        for (slot, sequence) in self.slots.iter().enumerate() {
            let Some(sequence) = sequence else { continue };
            if let Some(token) = sequence.next {
                added = added.and(self.batch.add(
                    token,
                    sequence.position() as i32,
                    &[sequence_id(slot)],
                    true,
                ));
                sampling.push((slot, self.batch.n_tokens() - 1));
            }
        }
        // (slot, prompt tokens added) for the prefill part.
        let mut prefilled: Vec<(usize, usize)> = Vec::new();
        for &slot in &self.admitted {
            let room = self.settings.step_tokens - self.batch.n_tokens() as usize;
            if room == 0 {
                break;
            }
            let Some(sequence) = &self.slots[slot] else {
                continue;
            };
            let left = sequence.prompt.len() - sequence.evaluated;
            if left == 0 {
                continue;
            }
            let count = left.min(room);
            for position in sequence.evaluated..sequence.evaluated + count {
                let last = position + 1 == sequence.prompt.len();
                added = added.and(self.batch.add(
                    sequence.prompt[position],
                    position as i32,
                    &[sequence_id(slot)],
                    last,
                ));
                if last {
                    sampling.push((slot, self.batch.n_tokens() - 1));
                }
            }
            prefilled.push((slot, count));
        }
        let decoded = added
            .map_err(|e| EngineError::backend_caused(BACKEND, "cannot build the batch", e))
            .and_then(|()| {
                self.context
                    .decode(&mut self.batch)
                    .map_err(|e| backend_error(format!("decode failed: {e}")))
            });
        if let Err(error) = decoded {
            // The whole step failed: every sequence in it fails with the same message.
            // Each failed sequence gets its own error: the text, causes included, without the
            // backend's name (backend_error adds it again).
            let text = crate::error::with_causes(&error);
            let message = text
                .strip_prefix(&format!("{BACKEND}: "))
                .unwrap_or(&text)
                .to_string();
            let mut failed: Vec<usize> = sampling.iter().map(|&(slot, _)| slot).collect();
            failed.extend(prefilled.iter().map(|&(slot, _)| slot));
            failed.sort_unstable();
            failed.dedup();
            for slot in failed {
                let released = self.release(slot);
                self.wipe(slot);
                if let Some(sequence) = released {
                    let error = backend_error(message.clone());
                    let _ = sequence
                        .events
                        .send((sequence.tag, Event::Finished(Err(error))));
                }
            }
            return;
        }
        for (slot, count) in prefilled {
            if let Some(sequence) = &mut self.slots[slot] {
                sequence.evaluated += count;
            }
        }
        for (slot, logits_index) in sampling {
            if self.sample(slot, logits_index) {
                self.finish(slot);
            }
        }
    }

    /// Samples the next token of the sequence in `slot` from the logits at `logits_index`,
    /// streams its text; returns whether the sequence has ended.
    fn sample(&mut self, slot: usize, logits_index: i32) -> bool {
        let context_per_sequence = self.settings.context_per_sequence;
        let vocab = self.model.vocab();
        let Some(sequence) = &mut self.slots[slot] else {
            return false;
        };
        let logits = self.context.get_logits_ith(logits_index);
        let token = match &mut sequence.sampler {
            Some(sampler) => sampler.sample(&self.context, logits_index),
            // A plain argmax over the logits: the same token as llama.cpp's greedy sampler,
            // without building its candidate array over the whole vocabulary every step.
            None => LlamaToken(crate::sampling::argmax(logits) as i32),
        };
        sequence.first_token_at.get_or_insert_with(Instant::now);
        if vocab.is_eog(token) && !sequence.params.ignore_eos {
            sequence.stop = Some(StopReason::EndOfText);
            return true;
        }
        if let Some(logprobs) = &mut sequence.logprobs {
            logprobs.push(crate::sampling::log_probability(logits, token.0 as u32));
        }
        sequence.token_ids.push(token.0 as u32);
        let piece = vocab.token_to_piece(token, false, None);
        let text = sequence.utf8.push(&piece);
        if !text.is_empty() {
            sequence.text.push_str(&text);
            let _ = sequence.events.send((sequence.tag, Event::Token { text }));
        }
        sequence.next = Some(token);
        if sequence.token_ids.len() >= sequence.params.max_new_tokens {
            sequence.stop = Some(StopReason::MaxTokens);
        } else if sequence.position() + 1 >= context_per_sequence {
            sequence.stop = Some(StopReason::ContextFull);
        }
        sequence.stop.is_some()
    }

    /// Evicts a finished sequence and sends its generation.
    fn finish(&mut self, slot: usize) {
        let Some(mut sequence) = self.release(slot) else {
            return;
        };
        let finished = Instant::now();
        let rest = sequence.utf8.finish();
        if !rest.is_empty() {
            sequence.text.push_str(&rest);
            let _ = sequence.events.send((
                sequence.tag,
                Event::Token {
                    text: rest.to_string(),
                },
            ));
        }
        let first = sequence.first_token_at.unwrap_or(finished);
        let generation = Generation {
            text: sequence.text,
            prompt_tokens: sequence.prompt.len(),
            prompt_token_ids: sequence.prompt.iter().map(|t| t.0 as u32).collect(),
            cached_prompt_tokens: sequence.cached,
            generated_tokens: sequence.token_ids.len(),
            token_ids: sequence.token_ids,
            logprobs: sequence.logprobs,
            stop: sequence.stop.unwrap_or(StopReason::MaxTokens),
            timings: Timings {
                queue: sequence.admitted_at.duration_since(sequence.queued_at),
                prefill: first.duration_since(sequence.admitted_at),
                decode: finished.saturating_duration_since(first),
            },
        };
        let _ = sequence
            .events
            .send((sequence.tag, Event::Finished(Ok(generation))));
    }
}
