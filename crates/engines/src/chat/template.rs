//! The chat template: the model's own `tokenizer.chat_template` (Jinja, as Hugging Face
//! writes it) rendered with minijinja, or ChatML when the GGUF has none.

use minijinja::value::Serde;
use minijinja::{context, Environment, ErrorKind};
use serde::Serialize;

use crate::{Error, Result};

/// ChatML, the format SmolLM2, Qwen and most small instruct models were trained on; used when
/// the GGUF carries no template.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a conversation, as the template sees it (`message['role']`, `['content']`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
        }
    }
}

/// Where the template came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateSource {
    /// `tokenizer.chat_template` in the GGUF.
    Gguf,
    /// The GGUF has none (or it does not compile): ChatML.
    ChatMl,
}

pub(crate) struct ChatTemplate {
    environment: Environment<'static>,
    source: TemplateSource,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// A template that does not even compile would fail every request, so it is replaced by
    /// ChatML with a warning at load time rather than refused there.
    pub(crate) fn new(
        template: Option<String>,
        bos_token: String,
        eos_token: String,
    ) -> ChatTemplate {
        let mut environment = Environment::new();
        // Hugging Face renders with jinja2's trim_blocks and lstrip_blocks on.
        environment.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("the default delimiters are valid"),
        );
        // Templates call this to refuse a conversation they cannot format (roles not
        // alternating, a system message in the middle…): it becomes the caller's 400.
        environment.add_function("raise_exception", |message: String| {
            Err::<(), _>(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        let mut source = TemplateSource::ChatMl;
        if let Some(template) = template {
            match environment.add_template_owned("chat", template) {
                Ok(()) => source = TemplateSource::Gguf,
                Err(error) => tracing::warn!(
                    %error,
                    "the GGUF's tokenizer.chat_template does not compile; using ChatML instead"
                ),
            }
        }
        if source == TemplateSource::ChatMl {
            environment
                .add_template_owned("chat", CHATML)
                .expect("ChatML compiles");
        }
        ChatTemplate {
            environment,
            source,
            bos_token,
            eos_token,
        }
    }

    pub(crate) fn source(&self) -> TemplateSource {
        self.source
    }

    /// The prompt text for `messages`, ending where the assistant's answer starts.
    pub(crate) fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        let template = self
            .environment
            .get_template("chat")
            .map_err(|error| Error::Template(error.to_string()))?;
        template
            .render(context! {
                messages => Serde(messages),
                add_generation_prompt => true,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|error| Error::Template(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chatml() -> ChatTemplate {
        ChatTemplate::new(None, "<s>".into(), "</s>".into())
    }

    #[test]
    fn falls_back_to_chatml() {
        let template = chatml();
        assert_eq!(template.source(), TemplateSource::ChatMl);
        let text = template
            .render(&[
                ChatMessage::new(Role::System, "Be brief."),
                ChatMessage::new(Role::User, "Hi"),
            ])
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_template_that_does_not_compile_becomes_chatml() {
        let template = ChatTemplate::new(Some("{% for %}".into()), "<s>".into(), "</s>".into());
        assert_eq!(template.source(), TemplateSource::ChatMl);
    }

    #[test]
    fn raise_exception_is_an_error_not_a_panic() {
        let template = ChatTemplate::new(
            Some(
                "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('must start with user') }}{% endif %}{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}"
                    .into(),
            ),
            "<s>".into(),
            "</s>".into(),
        );
        assert_eq!(template.source(), TemplateSource::Gguf);
        let error = template
            .render(&[ChatMessage::new(Role::Assistant, "x")])
            .unwrap_err();
        assert!(matches!(error, Error::Template(_)), "{error}");
        assert!(
            error.to_string().contains("must start with user"),
            "{error}"
        );
        let text = template
            .render(&[ChatMessage::new(Role::User, "x")])
            .unwrap();
        assert_eq!(text, "<s>x</s>");
    }
}
