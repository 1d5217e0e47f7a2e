//! A model's own chat template (Jinja, from `tokenizer_config.json` or GGUF metadata), rendered
//! with minijinja the way Hugging Face's `apply_chat_template` renders it.
//!
//! Templates call a few functions transformers provides: `raise_exception(message)` (an error that
//! names the template's complaint) and `strftime_now(format)` (Llama 3's templates date their system
//! prompt). Python string methods (`.strip()`, `.startswith()`, ...) come from minijinja-contrib's
//! pycompat. A leading BOS in the rendered text is removed, because our tokenizers add BOS
//! themselves (Hugging Face tokenizes chat text without adding special tokens for the same reason).

use std::fmt::{self, Write};

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, Local, TimeZone};
use minijinja::{context, Environment, Error, ErrorKind};

use crate::error::EngineError;

/// One message of a conversation, as chat templates see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
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

    /// Renders `messages`, opening the assistant's turn when `add_generation_prompt` is set.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        let template = self
            .environment
            .get_template("chat")
            .map_err(template_error("cannot render the chat template"))?;
        let messages: Vec<minijinja::Value> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
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
            .render(&[Message::user("  hello  ")], true)
            .unwrap();
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
        let message = Message {
            role: "tool".into(),
            content: "x".into(),
        };
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
    fn a_broken_template_is_an_error() {
        assert!(ChatTemplate::new("{% for %}", "", "", false).is_err());
        // A tokenizer that adds no BOS keeps whatever the template writes first.
        let keep = ChatTemplate::new("{{ bos_token }}x", "<s>", "", false).unwrap();
        assert_eq!(keep.render(&[], false).unwrap(), "<s>x");
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
