//! LiteLLM's post-call hook sends only the response's texts; the prompt it answers came in an
//! earlier pre-call request with the same `litellm_call_id`. This keeps those prompts for a
//! bounded time and count, so that a response is judged in the context of its prompt.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Prompts by call id, forgotten after `ttl` or when more than `capacity` are held.
pub struct PromptMemory {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    prompts: HashMap<String, (String, Instant)>,
    order: VecDeque<(String, Instant)>,
}

impl PromptMemory {
    /// An empty memory.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Remembers the prompt of call `id`.
    pub fn remember(&self, id: &str, prompt: String) {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.expire(now, self.ttl);
        while inner.prompts.len() >= self.capacity {
            let Some((oldest, at)) = inner.order.pop_front() else {
                break;
            };
            if inner.prompts.get(&oldest).is_some_and(|(_, t)| *t == at) {
                inner.prompts.remove(&oldest);
            }
        }
        inner.prompts.insert(id.to_string(), (prompt, now));
        inner.order.push_back((id.to_string(), now));
    }

    /// The prompt of call `id`, if remembered and fresh.
    pub fn recall(&self, id: &str) -> Option<String> {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.expire(now, self.ttl);
        inner.prompts.get(id).map(|(prompt, _)| prompt.clone())
    }
}

impl Inner {
    fn expire(&mut self, now: Instant, ttl: Duration) {
        while let Some((id, at)) = self.order.front() {
            if now.duration_since(*at) < ttl {
                break;
            }
            if self.prompts.get(id).is_some_and(|(_, t)| t == at) {
                self.prompts.remove(id);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_forgotten_by_count() {
        // A long life, so that a stalled test thread cannot expire what it checks.
        let memory = PromptMemory::new(Duration::from_secs(600), 2);
        memory.remember("a", "A".into());
        memory.remember("b", "B".into());
        memory.remember("c", "C".into());
        assert_eq!(memory.recall("a"), None, "the oldest goes past the bound");
        assert_eq!(memory.recall("c").as_deref(), Some("C"));
        memory.remember("b", "B2".into());
        assert_eq!(memory.recall("b").as_deref(), Some("B2"));
        assert_eq!(memory.recall("c").as_deref(), Some("C"));
    }

    #[test]
    fn prompts_are_forgotten_by_age() {
        let memory = PromptMemory::new(Duration::from_millis(50), 2);
        memory.remember("b", "B".into());
        // Sleeping longer than planned cannot fail this.
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(memory.recall("b"), None, "expired");
    }
}
