//! A model's own chat template (Jinja, from `tokenizer_config.json` or GGUF metadata), rendered
//! with minijinja the way Hugging Face's `apply_chat_template` renders it.
//!
//! Templates call a few functions transformers provides: `raise_exception(message)` (an error that
//! names the template's complaint) and `strftime_now(format)` (Llama 3's templates date their system
//! prompt). Python string methods (`.strip()`, `.startswith()`, ...) come from minijinja-contrib's
//! pycompat. A leading BOS in the rendered text is removed, because our tokenizers add BOS
//! themselves (Hugging Face tokenizes chat text without adding special tokens for the same reason).

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

fn template_error(error: Error) -> EngineError {
    let mut message = format!("chat template: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    EngineError::Backend {
        backend: "chat-template",
        message,
    }
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
        environment.add_function("strftime_now", |format: String| -> Result<String, Error> {
            Ok(strftime_now(&format))
        });
        environment
            .add_template_owned("chat", source.to_string())
            .map_err(template_error)?;
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
            .map_err(template_error)?;
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
            .map_err(template_error)?;
        Ok(match text.strip_prefix(self.bos_token.as_str()) {
            Some(rest) if self.tokenizer_adds_bos && !self.bos_token.is_empty() => rest.to_string(),
            _ => text,
        })
    }
}

/// Today's date (UTC) in a strftime format, for the directives chat templates use.
fn strftime_now(format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
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
        let error = template.render(&[message], true).unwrap_err().to_string();
        assert!(
            error.contains("Only user and assistant roles are supported, got tool"),
            "{error}"
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
    fn strftime_covers_the_common_directives() {
        let text = strftime_now("%Y-%m-%d %B %b %y %% %q");
        let parts: Vec<&str> = text.split(' ').collect();
        let (year, rest) = parts[0].split_once('-').unwrap();
        let month: usize = rest[..2].parse().unwrap();
        assert!(
            year.parse::<i32>().unwrap() >= 2024
                && (1..=31).contains(&rest[3..].parse::<u32>().unwrap())
        );
        let names = [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ];
        assert_eq!(parts[1], names[month - 1]);
        assert_eq!(&parts[1][..3], parts[2]);
        assert_eq!(parts[3], &year[2..]);
        assert_eq!((parts[4], parts[5]), ("%", "%q"));
    }
}
