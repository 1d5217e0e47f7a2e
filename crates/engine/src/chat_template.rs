//! A model's own chat template (Jinja, from `tokenizer_config.json` or GGUF metadata), rendered
//! with minijinja the way Hugging Face's `apply_chat_template` renders it.
//!
//! Templates call a few functions transformers provides: `raise_exception(message)` (an error that
//! names the template's complaint) and `strftime_now(format)` (Llama 3's templates date their system
//! prompt). Python string methods (`.strip()`, `.startswith()`, ...) come from minijinja-contrib's
//! pycompat. A leading BOS in the rendered text is removed, because our tokenizers add BOS
//! themselves (Hugging Face tokenizes chat text without adding special tokens for the same reason).
//!
//! A message's text is content: [`ChatTemplate::render`] returns a [`Prompt`] whose format spans
//! are what the template wrote (its markers) and whose content spans are the messages' text, so a
//! message that contains `<|im_end|>` does not end its turn. The template is rendered twice, once
//! with the messages and once with a placeholder for each; the placeholders show where each
//! message's text went (and whether the template trimmed it), and a template that changes the text
//! in any other way is refused rather than guessed.

use std::fmt::{self, Write};

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, Local, TimeZone};
use guardreasoner_protocol::Prompt;
use minijinja::{context, Environment, Error, ErrorKind};

use crate::error::EngineError;

/// One message of a conversation, as chat templates see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text: content, or for a guard's prompt the format's instruction around content.
    pub content: Prompt,
}

impl Message {
    /// A message of `role` whose text is content alone (a chat request's message).
    pub fn text(role: impl Into<String>, content: &str) -> Self {
        Self {
            role: role.into(),
            content: Prompt::content(content),
        }
    }

    /// A user message.
    pub fn user(content: Prompt) -> Self {
        Self {
            role: "user".into(),
            content,
        }
    }
}

/// What opens and closes a placeholder: private-use characters no template writes.
const PLACEHOLDER_OPEN: char = '\u{F0000}';
const PLACEHOLDER_CLOSE: char = '\u{F0001}';

/// Marks where message `index`'s text goes in a placeholder rendering.
fn placeholder(index: usize) -> String {
    format!("{PLACEHOLDER_OPEN}{index}{PLACEHOLDER_CLOSE}")
}

/// A compiled chat template with its special tokens.
#[derive(Clone)]
pub struct ChatTemplate {
    environment: Environment<'static>,
    bos_token: String,
    eos_token: String,
    tokenizer_adds_bos: bool,
}

fn template_error(doing: &'static str) -> impl FnOnce(Error) -> EngineError {
    move |error| EngineError::backend_caused("chat-template", doing, error)
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the texts templates insert. When the
    /// model's tokenizer adds BOS itself, a BOS the template writes first is dropped.
    pub fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
        tokenizer_adds_bos: bool,
    ) -> Result<Self, EngineError> {
        let mut environment = Environment::new();
        minijinja_contrib::add_to_environment(&mut environment);
        environment
            .set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        // transformers calls `datetime.now().strftime(format)`: the local date.
        environment.add_function("strftime_now", |format: String| -> Result<String, Error> {
            strftime(&Local::now(), &format)
        });
        environment
            .add_template_owned("chat", source.to_string())
            .map_err(template_error("cannot compile the chat template"))?;
        Ok(Self {
            environment,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            tokenizer_adds_bos,
        })
    }

    /// Renders `messages`, opening the assistant's turn when `add_generation_prompt` is set: the
    /// template's text as the format's, each message's spans as they came.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Prompt, EngineError> {
        let texts: Vec<String> = messages.iter().map(|m| m.content.text()).collect();
        let real = self.render_text(messages, &texts, add_generation_prompt)?;
        // An empty message has nothing to trace, and a template may test it (`if content`): it
        // stays empty in both renderings.
        let placeholders: Vec<String> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if m.content.is_empty() {
                    String::new()
                } else {
                    placeholder(i)
                }
            })
            .collect();
        let marked = self.render_text(messages, &placeholders, add_generation_prompt)?;
        trace(&real, &marked, messages).ok_or_else(|| {
            EngineError::backend(
                "chat-template",
                "the chat template changes the messages' text in a way that cannot be traced (it does more than trim it), so the conversation's text cannot be kept apart from the template's markers",
            )
        })
    }

    /// The template's text for `messages` with `contents` as their texts.
    fn render_text(
        &self,
        messages: &[Message],
        contents: &[String],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        let template = self
            .environment
            .get_template("chat")
            .map_err(template_error("cannot render the chat template"))?;
        let messages: Vec<minijinja::Value> = messages
            .iter()
            .zip(contents)
            .map(|(m, content)| context! { role => m.role.as_str(), content => content.as_str() })
            .collect();
        let text = template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(template_error("cannot render the chat template"))?;
        Ok(match text.strip_prefix(self.bos_token.as_str()) {
            Some(rest) if self.tokenizer_adds_bos && !self.bos_token.is_empty() => rest.to_string(),
            _ => text,
        })
    }
}

/// Rebuilds `real` (the template rendered with the messages) as spans: the text around the
/// placeholders of `marked` is the template's, and where placeholder `i` stands, `real` must hold
/// message `i`'s text, whole or trimmed (templates call `.strip()` / `| trim`). `None` where it
/// does not.
fn trace(real: &str, marked: &str, messages: &[Message]) -> Option<Prompt> {
    // The template's pieces and, between them, which message stood there.
    let mut pieces: Vec<&str> = Vec::new();
    let mut slots: Vec<usize> = Vec::new();
    let mut rest = marked;
    while let Some(start) = rest.find(PLACEHOLDER_OPEN) {
        let after = &rest[start + PLACEHOLDER_OPEN.len_utf8()..];
        let end = after.find(PLACEHOLDER_CLOSE)?;
        let index: usize = after[..end].parse().ok()?;
        if index >= messages.len() {
            return None;
        }
        pieces.push(&rest[..start]);
        slots.push(index);
        rest = &after[end + PLACEHOLDER_CLOSE.len_utf8()..];
    }
    pieces.push(rest);
    let mut prompt = Prompt::format(pieces[0]);
    let mut at = real.strip_prefix(pieces[0])?;
    for (slot, next) in slots.iter().zip(&pieces[1..]) {
        let content = &messages[*slot].content;
        let found = [(false, false), (true, true), (true, false), (false, true)]
            .into_iter()
            .map(|(start, end)| content.trimmed(start, end))
            .find(|candidate| {
                let text = candidate.text();
                at.strip_prefix(text.as_str())
                    .is_some_and(|left| left.starts_with(next))
            })?;
        at = at[found.len()..].strip_prefix(next)?;
        prompt.append(&found).push_format(next);
    }
    at.is_empty().then_some(prompt)
}

/// `date` in a strftime `format`, as Python's `datetime.strftime` writes it for the directives chat
/// templates use; a directive chrono does not know is the template's error, not a panic.
fn strftime<Tz: TimeZone>(date: &DateTime<Tz>, format: &str) -> Result<String, Error>
where
    Tz::Offset: fmt::Display,
{
    let items: Vec<Item> = StrftimeItems::new(format).collect();
    if items.contains(&Item::Error) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: {format:?} is not a strftime format"),
        ));
    }
    let mut text = String::new();
    write!(text, "{}", date.format_with_items(items.into_iter())).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: cannot format the date with {format:?}"),
        )
    })?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A template written for this test in the style of Llama 3's: a dated system turn, a check
    /// that raises on a bad role, BOS, and Python string methods.
    const TEMPLATE: &str = "{{ bos_token }}{% set date = strftime_now('%d %b %Y') %}<|start_header_id|>system<|end_header_id|>\n\nToday Date: {{ date }}<|eot_id|>{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('Only user and assistant roles are supported, got ' + m.role) }}{% endif %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content.strip() }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

    #[test]
    fn renders_with_the_functions_templates_call() {
        let template =
            ChatTemplate::new(TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", true).unwrap();
        let text = template
            .render(&[Message::text("user", "  hello  ")], true)
            .unwrap()
            .text();
        assert!(
            text.starts_with("<|start_header_id|>system"),
            "BOS is left to the tokenizer: {text}"
        );
        assert!(
            text.contains("<|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|>"),
            "{text}"
        );
        assert!(text.ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"));
        let date = text
            .split("Today Date: ")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap();
        assert_eq!(date.split(' ').count(), 3, "{date}");
        assert!(
            date.split(' ').next_back().unwrap().starts_with("20"),
            "{date}"
        );
    }

    #[test]
    fn raise_exception_is_an_error_with_the_templates_message() {
        let template = ChatTemplate::new(TEMPLATE, "", "", true).unwrap();
        let message = Message::text("tool", "x");
        let error = template.render(&[message], true).unwrap_err();
        assert_eq!(
            error.to_string(),
            "chat-template: cannot render the chat template"
        );
        // minijinja's error, with the template's own message, is kept as the source.
        let source = std::error::Error::source(&error).unwrap().to_string();
        assert!(
            source.contains("Only user and assistant roles are supported, got tool"),
            "{source}"
        );
    }

    #[test]
    fn the_messages_text_is_content_and_the_markers_are_the_templates() {
        use guardreasoner_protocol::SpanKind;
        let template =
            ChatTemplate::new(TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", true).unwrap();
        let mut guard_prompt = Prompt::format("Instruction\n");
        guard_prompt.push_content(" <|eot_id|> hi\n");
        let prompt = template
            .render(&[Message::user(guard_prompt)], true)
            .unwrap();
        let content = prompt.texts(SpanKind::Content);
        // The template strips the text: the trailing newline went, and the spans follow.
        assert_eq!(content, [" <|eot_id|> hi"]);
        assert!(prompt
            .text()
            .contains("<|end_header_id|>\n\nInstruction\n <|eot_id|> hi<|eot_id|>"));
        let format: String = prompt.texts(SpanKind::Format).concat();
        assert_eq!(format.matches("<|eot_id|>").count(), 2, "{format}");
    }

    #[test]
    fn a_template_that_rewrites_the_text_is_refused() {
        let upper = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m.content | upper }}<|im_end|>{% endfor %}",
            "",
            "",
            false,
        )
        .unwrap();
        let error = upper
            .render(&[Message::text("user", "hi")], false)
            .unwrap_err();
        assert!(error.to_string().contains("cannot be traced"), "{error}");
        // Text the template leaves alone is traced, even when it repeats a marker.
        let plain = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}",
            "",
            "",
            false,
        )
        .unwrap();
        let prompt = plain
            .render(&[Message::text("user", "<|im_end|>")], false)
            .unwrap();
        assert_eq!(prompt.spans().len(), 3);
        assert_eq!(prompt.text(), "<|im_start|><|im_end|><|im_end|>");
    }

    #[test]
    fn a_broken_template_is_an_error() {
        assert!(ChatTemplate::new("{% for %}", "", "", false).is_err());
        // A tokenizer that adds no BOS keeps whatever the template writes first.
        let keep = ChatTemplate::new("{{ bos_token }}x", "<s>", "", false).unwrap();
        assert_eq!(keep.render(&[], false).unwrap().text(), "<s>x");
    }

    #[test]
    fn strftime_writes_what_python_writes() {
        // Python: datetime(2024, 7, 26).strftime(f) for each format below; "%d %b %Y" is the
        // date Llama 3.1's template writes ("26 Jul 2024" is its own default).
        let date = chrono::Utc.with_ymd_and_hms(2024, 7, 26, 9, 5, 0).unwrap();
        for (format, python) in [
            ("%d %b %Y", "26 Jul 2024"),
            ("%Y-%m-%d", "2024-07-26"),
            ("%B %d, %Y", "July 26, 2024"),
            ("%y %% %A %a %H:%M", "24 % Friday Fri 09:05"),
            ("no directives", "no directives"),
        ] {
            assert_eq!(strftime(&date, format).unwrap(), python, "{format}");
        }
        let error = strftime(&date, "%Q").unwrap_err().to_string();
        assert!(error.contains("\"%Q\" is not a strftime format"), "{error}");
        // Through the template, an unknown directive is the template's error.
        let template = ChatTemplate::new("{{ strftime_now('%Q') }}", "", "", false).unwrap();
        assert!(template.render(&[], false).is_err());
    }
}
