//! One sequence in, its events out: the execution path a server drives, and that
//! [`Generate::generate`] rides on for the command line.
//!
//! The shape is the text-generation-inference router's, kept in three owners:
//! - [`validate`] (here): params checked, prompt tokenized once and measured against the context,
//!   each request on its own, so one bad item never fails its neighbours;
//! - the bounded queue ([`QueueGauge`] counts it; [`Scheduler::submit`] refuses past the bound at
//!   once, [`Rejected::QueueFull`]);
//! - the scheduler, which the backend owns on its own thread: for llama.cpp, continuous batching
//!   (`backends::llama_cpp`); for backends that cannot batch sequences of different lengths, one
//!   sequence at a time ([`Serial`]).
//!
//! A request's events come back on the channel given to `submit`, tagged with the caller's number
//! for it; dropping the receiving end cancels the request (the scheduler checks every step and
//! frees its slot).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use guardreasoner_protocol::Prompt;

use crate::chat_template::ChatTemplate;
use crate::error::EngineError;
use crate::generate::{Batch, Generate, Generation, ModelInfo, SamplingParams, TokenEvent};

/// One sequence to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The prompt, in spans of the format's text and of content.
    pub prompt: Prompt,
    /// The prompt's tokens, when validation counted them (a local tokenizer); the scheduler then
    /// does not tokenize again.
    pub tokens: Option<Vec<u32>>,
    /// Text the prompt starts with that other requests share (GuardReasoner's instruction): the
    /// backend may reuse its evaluated state, and reuses no more than it. `None` lets the backend
    /// reuse whatever it holds of the prompt's start (faster; greedy output may then differ in
    /// near-ties with what ran before, as llama.cpp's sums run in another order).
    pub shared_prefix: Option<Prompt>,
    /// Sampling for this sequence alone (its seed is used as given).
    pub params: SamplingParams,
}

/// What the scheduler reports about one request.
#[derive(Debug)]
pub enum Event {
    /// A new piece of text (empty text is never sent).
    Token {
        /// The text the token completes.
        text: String,
    },
    /// The sequence ended: its generation, or why it failed.
    Finished(Result<Generation, EngineError>),
}

/// Where a request's events go, each tagged with the number the caller gave it.
pub type Events = UnboundedSender<(usize, Event)>;

/// The receiving end of [`Events`]; dropping it cancels every request sending to it.
pub type EventReceiver = UnboundedReceiver<(usize, Event)>;

/// A channel for the events of one or more requests.
pub fn events() -> (Events, EventReceiver) {
    unbounded_channel()
}

/// Why a request was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The queue holds its bound of waiting requests already.
    #[error("the queue is full ({capacity} requests waiting)")]
    QueueFull {
        /// The bound.
        capacity: usize,
    },
    /// The scheduler's thread has stopped.
    #[error("the scheduler has stopped")]
    Stopped,
}

/// How busy a scheduler is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Sequences generating.
    pub running: usize,
    /// The most sequences that run together.
    pub slots: usize,
    /// The most requests that may wait.
    pub queue_capacity: usize,
}

/// An engine that takes sequences one at a time, from any thread.
pub trait Scheduler: Send + Sync {
    /// Facts about the model.
    fn info(&self) -> &ModelInfo;

    /// The model's own chat template, when its files carry one.
    fn chat_template(&self) -> Option<&ChatTemplate>;

    /// The prompt's tokens (BOS included), or `None` where only the model's server knows them
    /// (a remote backend, which then says itself what does not fit).
    fn tokenize(&self, prompt: &Prompt) -> Result<Option<Vec<u32>>, EngineError>;

    /// The number of token ids the model knows, where a prompt may come as ids
    /// ([`validate_tokens`]); `None` where the backend takes text only.
    fn vocab_size(&self) -> Option<usize> {
        None
    }

    /// Queues `requests` together, each with its tag, all or none: the scheduler sees them at
    /// once, so what runs with what depends on their order alone, not on timing (a batch command
    /// gives the same output every run). Refuses at once when the queue has no room for them all.
    fn submit_all(&self, requests: Vec<(usize, Request)>, events: Events) -> Result<(), Rejected>;

    /// Queues one request; its events go to `events` tagged `tag`.
    fn submit(&self, request: Request, tag: usize, events: Events) -> Result<(), Rejected> {
        self.submit_all(vec![(tag, request)], events)
    }

    /// Queue depth and running sequences now.
    fn load(&self) -> Load;

    /// Whether a sequence can join a running batch (continuous batching); `false` where the
    /// backend runs one sequence at a time.
    fn continuous(&self) -> bool;
}

/// Checks a request on its own before it is queued: sampling parameters, then the prompt's length
/// against the context (tokenized once; the tokens travel with the request). `index` names the
/// prompt in errors.
pub fn validate(
    scheduler: &dyn Scheduler,
    index: usize,
    prompt: Prompt,
    shared_prefix: Option<Prompt>,
    params: SamplingParams,
) -> Result<Request, EngineError> {
    params.validate()?;
    let tokens = scheduler.tokenize(&prompt)?;
    if let Some(tokens) = &tokens {
        fits(index, tokens.len(), scheduler.info().context_length)?;
    }
    Ok(Request {
        prompt,
        tokens,
        shared_prefix,
        params,
    })
}

/// Checks a prompt given as token ids (OpenAI's completions API allows it): the backend must take
/// ids, every id must be the model's, and the prompt must fit. `index` names the prompt in errors.
pub fn validate_tokens(
    scheduler: &dyn Scheduler,
    index: usize,
    tokens: Vec<u32>,
    params: SamplingParams,
) -> Result<Request, EngineError> {
    params.validate()?;
    let Some(vocab) = scheduler.vocab_size() else {
        return Err(EngineError::InvalidPrompt {
            index,
            message: format!(
                "the {} backend takes prompts as text only, not as token ids",
                scheduler.info().backend
            ),
        });
    };
    if let Some((at, id)) = tokens
        .iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= vocab)
    {
        return Err(EngineError::InvalidPrompt {
            index,
            message: format!("token {at} is id {id}, past the vocabulary's {vocab} ids"),
        });
    }
    fits(index, tokens.len(), scheduler.info().context_length)?;
    Ok(Request {
        prompt: Prompt::new(),
        tokens: Some(tokens),
        shared_prefix: None,
        params,
    })
}

/// Whether a prompt of `tokens` tokens fits a context of `context` with room for at least one
/// new token; `index` names the prompt in the error.
pub fn fits(index: usize, tokens: usize, context: usize) -> Result<(), EngineError> {
    if tokens == 0 {
        return Err(EngineError::InvalidPrompt {
            index,
            message: "the prompt is empty (no tokens to start from)".into(),
        });
    }
    if tokens + 1 > context {
        return Err(EngineError::PromptTooLong {
            index,
            tokens,
            context,
        });
    }
    Ok(())
}

/// Runs a whole batch through a scheduler, as [`Generate::generate`] does: every prompt its own
/// request (seeded `seed + index`), streamed text relayed, generations returned in order. The first
/// failed prompt fails the batch, as the trait's contract says.
pub fn run_batch(
    scheduler: &dyn Scheduler,
    batch: &Batch,
    on_token: &mut dyn FnMut(TokenEvent<'_>),
) -> Result<Vec<Generation>, EngineError> {
    batch.params.validate()?;
    // Always a hint, so that a batch reuses no more than what its prompts share (and its
    // output does not depend on what earlier batches left in the cache).
    let shared_prefix = batch
        .shared_prefix
        .clone()
        .or_else(|| common_text_prefix(&batch.prompts))
        .or_else(|| Some(Prompt::new()));
    let requests = batch
        .prompts
        .iter()
        .enumerate()
        .map(|(index, prompt)| {
            let params = SamplingParams {
                seed: batch.params.seed.wrapping_add(index as u64),
                ..batch.params.clone()
            };
            validate(
                scheduler,
                index,
                prompt.clone(),
                shared_prefix.clone(),
                params,
            )
            .map(|request| (index, request))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (sender, mut receiver) = events();
    // In groups the queue can hold; a group waits for room rather than failing the batch.
    let capacity = scheduler.load().queue_capacity.max(1);
    let mut requests = requests.into_iter().peekable();
    while requests.peek().is_some() {
        let group: Vec<_> = requests.by_ref().take(capacity).collect();
        loop {
            match scheduler.submit_all(group.clone(), sender.clone()) {
                Ok(()) => break,
                Err(Rejected::QueueFull { .. }) => thread::sleep(Duration::from_millis(2)),
                Err(Rejected::Stopped) => return Err(stopped(scheduler)),
            }
        }
    }
    drop(sender);
    let mut generations: Vec<Option<Generation>> = vec![None; batch.prompts.len()];
    let mut left = batch.prompts.len();
    while left > 0 {
        let Some((index, event)) = receiver.blocking_recv() else {
            return Err(stopped(scheduler));
        };
        match event {
            Event::Token { text } => on_token(TokenEvent {
                sequence: index,
                text: &text,
            }),
            Event::Finished(result) => {
                generations[index] = Some(result?);
                left -= 1;
            }
        }
    }
    Ok(generations.into_iter().flatten().collect())
}

fn stopped(scheduler: &dyn Scheduler) -> EngineError {
    EngineError::backend(
        scheduler.info().backend,
        "the scheduler stopped while generating",
    )
}

/// The longest start every prompt shares, text and kinds (none for fewer than two prompts): a
/// hint of what the backend may evaluate once, when the caller gave none.
fn common_text_prefix(prompts: &[Prompt]) -> Option<Prompt> {
    let (first, rest) = prompts.split_first()?;
    if rest.is_empty() {
        return None;
    }
    let shared = rest
        .iter()
        .fold(first.clone(), |shared, prompt| shared.common_prefix(prompt));
    (!shared.is_empty()).then_some(shared)
}

/// Counts waiting requests against the queue's bound; shared by the submitting threads and the
/// scheduler's.
#[derive(Debug)]
pub struct QueueGauge {
    waiting: AtomicUsize,
    running: AtomicUsize,
    capacity: usize,
    slots: usize,
}

impl QueueGauge {
    /// A queue of at most `capacity` waiting requests in front of `slots` running ones.
    pub fn new(capacity: usize, slots: usize) -> Self {
        Self {
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            capacity,
            slots,
        }
    }

    /// Takes `count` places in the queue, or none when they do not all fit.
    pub fn enter(&self, count: usize) -> Result<(), Rejected> {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting + count <= self.capacity).then_some(waiting + count)
            })
            .map(|_| ())
            .map_err(|_| Rejected::QueueFull {
                capacity: self.capacity,
            })
    }

    /// Gives back `count` places (their requests left the queue: admitted, or never sent).
    pub fn leave(&self, count: usize) {
        self.waiting.fetch_sub(count, Ordering::AcqRel);
    }

    /// Records how many sequences run now.
    pub fn set_running(&self, running: usize) {
        self.running.store(running, Ordering::Release);
    }

    /// The numbers now.
    pub fn load(&self) -> Load {
        Load {
            queued: self.waiting.load(Ordering::Acquire),
            running: self.running.load(Ordering::Acquire),
            slots: self.slots,
            queue_capacity: self.capacity,
        }
    }
}

/// The queue bound a scheduler uses when its caller gives none: enough for a batch command to
/// keep every slot busy.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// A queued request, as a scheduler's thread receives it.
#[derive(Debug)]
pub struct Job {
    /// What to generate.
    pub request: Request,
    /// The caller's number for it.
    pub tag: usize,
    /// Where its events go.
    pub events: Events,
    /// When it was queued.
    pub queued_at: Instant,
}

impl Job {
    /// Jobs for requests queued together now.
    pub fn group(requests: Vec<(usize, Request)>, events: Events) -> Vec<Job> {
        let queued_at = Instant::now();
        requests
            .into_iter()
            .map(|(tag, request)| Job {
                request,
                tag,
                events: events.clone(),
                queued_at,
            })
            .collect()
    }
}

/// The sending side of a scheduler's queue: the bound checked, then the group sent to the
/// scheduler's thread, all or none. Every scheduler queues through one of these.
#[derive(Debug)]
pub struct JobQueue {
    gauge: Arc<QueueGauge>,
    sender: Mutex<Option<mpsc::Sender<Vec<Job>>>>,
}

impl JobQueue {
    /// A queue of at most `capacity` waiting requests in front of `slots`; the scheduler's
    /// thread takes the receiver and a clone of the gauge.
    pub fn new(capacity: usize, slots: usize) -> (Self, mpsc::Receiver<Vec<Job>>) {
        let (sender, receiver) = mpsc::channel();
        let queue = Self {
            gauge: Arc::new(QueueGauge::new(capacity.max(1), slots)),
            sender: Mutex::new(Some(sender)),
        };
        (queue, receiver)
    }

    /// The gauge the scheduler's thread updates.
    pub fn gauge(&self) -> &Arc<QueueGauge> {
        &self.gauge
    }

    /// Queues `requests` together, or refuses them all.
    pub fn submit_all(
        &self,
        requests: Vec<(usize, Request)>,
        events: Events,
    ) -> Result<(), Rejected> {
        let count = requests.len();
        self.gauge.enter(count)?;
        let jobs = Job::group(requests, events);
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        match sender.as_ref().map(|sender| sender.send(jobs)) {
            Some(Ok(())) => Ok(()),
            _ => {
                self.gauge.leave(count);
                Err(Rejected::Stopped)
            }
        }
    }

    /// Closes the queue: the scheduler's thread ends once its running sequences finish.
    pub fn close(&self) {
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// A [`Scheduler`] over any [`Generate`] backend that runs one sequence at a time (candle, a
/// remote server): a thread of its own takes queued requests in order. A cancelled request is
/// skipped if it has not started; once started it runs to its end (the backend cannot stop
/// mid-sequence), and its events are dropped.
pub struct Serial {
    info: ModelInfo,
    chat_template: Option<ChatTemplate>,
    queue: JobQueue,
    worker: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Serial {
    /// Serves `engine` one sequence at a time, with at most `queue_capacity` waiting.
    pub fn new(engine: Box<dyn Generate>, queue_capacity: usize) -> Result<Self, EngineError> {
        let info = ModelInfo {
            max_batch: 1,
            ..engine.info().clone()
        };
        let chat_template = engine.chat_template().cloned();
        let (queue, receiver) = JobQueue::new(queue_capacity, 1);
        let worker = {
            let gauge = queue.gauge().clone();
            thread::Builder::new()
                .name("serial-scheduler".into())
                .spawn(move || serial_worker(engine, &gauge, receiver))
                .map_err(|e| {
                    EngineError::backend_caused(
                        info.backend,
                        "cannot start the scheduler thread",
                        e,
                    )
                })?
        };
        Ok(Self {
            info,
            chat_template,
            queue,
            worker: Mutex::new(Some(worker)),
        })
    }
}

fn serial_worker(
    mut engine: Box<dyn Generate>,
    gauge: &QueueGauge,
    jobs: mpsc::Receiver<Vec<Job>>,
) {
    for job in jobs.into_iter().flatten() {
        gauge.leave(1);
        if job.events.is_closed() {
            continue;
        }
        gauge.set_running(1);
        let admitted = Instant::now();
        let batch = Batch {
            prompts: vec![job.request.prompt],
            params: job.request.params,
            shared_prefix: job.request.shared_prefix,
        };
        let result = engine.generate(&batch, &mut |event| {
            let _ = job.events.send((
                job.tag,
                Event::Token {
                    text: event.text.to_string(),
                },
            ));
        });
        let result = result.and_then(|mut generations| {
            generations
                .pop()
                .ok_or_else(|| EngineError::backend("serial", "the backend returned no generation"))
        });
        let result = result.map(|mut generation| {
            generation.timings.queue = admitted.duration_since(job.queued_at);
            generation
        });
        let _ = job.events.send((job.tag, Event::Finished(result)));
        gauge.set_running(0);
    }
}

impl Scheduler for Serial {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    fn tokenize(&self, prompt: &Prompt) -> Result<Option<Vec<u32>>, EngineError> {
        // Counting needs the engine, which a running sequence holds for its whole length (and a
        // remote backend cannot count at all): the backend measures the prompt when it runs it,
        // and fails that one request if it does not fit.
        let _ = prompt;
        Ok(None)
    }

    fn submit_all(&self, requests: Vec<(usize, Request)>, events: Events) -> Result<(), Rejected> {
        self.queue.submit_all(requests, events)
    }

    fn load(&self) -> Load {
        self.queue.gauge().load()
    }

    fn continuous(&self) -> bool {
        false
    }
}

impl Drop for Serial {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(worker) = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_prefix_of_prompts_ends_on_a_character() {
        let prompts = [
            Prompt::content("Instruction: é a"),
            Prompt::content("Instruction: é b"),
        ];
        assert_eq!(
            common_text_prefix(&prompts),
            Some(Prompt::content("Instruction: é "))
        );
        let split = [Prompt::content("xé"), Prompt::content("xè")];
        assert_eq!(common_text_prefix(&split), Some(Prompt::content("x")));
        assert_eq!(common_text_prefix(&[Prompt::content("a")]), None);
        assert_eq!(
            common_text_prefix(&[Prompt::content("a"), Prompt::content("b")]),
            None
        );
    }

    #[test]
    fn the_gauge_refuses_past_its_bound_and_counts_back() {
        let gauge = QueueGauge::new(2, 4);
        gauge.enter(1).unwrap();
        gauge.enter(1).unwrap();
        assert_eq!(gauge.enter(1), Err(Rejected::QueueFull { capacity: 2 }));
        gauge.leave(2);
        assert_eq!(gauge.enter(3), Err(Rejected::QueueFull { capacity: 2 }));
        gauge.enter(2).unwrap();
        assert_eq!(gauge.load().queued, 2);
    }
}
