//! The chat template a GGUF file carries (`tokenizer.chat_template`, Jinja), rendered with
//! minijinja the way Hugging Face's `apply_chat_template` does: `trim_blocks` and
//! `lstrip_blocks`, Python string methods, `raise_exception`, and `bos_token` / `eos_token`.

use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind};

/// The template's name inside its environment.
const NAME: &str = "chat";

/// A compiled chat template.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos` and `eos` are the texts the template may spell out.
    pub(crate) fn new(source: &str, bos: String, eos: String) -> Result<Self, String> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| e.to_string())?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| format!("chat template: {e}"))?;
        Ok(Self { env, bos, eos })
    }

    /// Renders a conversation of `(role, content)` messages, ending with the prompt for the
    /// assistant's reply.
    pub(crate) fn render(&self, messages: &[(&str, &str)]) -> Result<String, String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|&(role, content)| Value::from_pairs([("role", role), ("content", content)]))
            .collect();
        let context = Value::from_pairs([
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(true)),
            ("bos_token", Value::from(self.bos.as_str())),
            ("eos_token", Value::from(self.eos.as_str())),
        ]);
        self.env
            .get_template(NAME)
            .and_then(|template| template.render(context))
            .map_err(|e| format!("chat template: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gemma's template: BOS spelled out, a `raise_exception` on bad roles, `trim` filters and
    /// block tags on their own lines.
    const GEMMA: &str = r#"{{ bos_token }}{% for message in messages %}
{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}
{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}
{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}
{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"#;

    #[test]
    fn renders_block_templates_as_hugging_face_does() {
        let template = ChatTemplate::new(GEMMA, "<bos>".into(), "<eos>".into()).unwrap();
        let text = template
            .render(&[("user", " Hi "), ("assistant", "Hello."), ("user", "Why?")])
            .unwrap();
        assert_eq!(
            text,
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n"
        );
        let message = template.render(&[("assistant", "first")]).unwrap_err();
        assert!(message.contains("roles must alternate"), "{message}");
    }

    #[test]
    fn python_string_methods_work() {
        let source =
            "{% for m in messages %}{{ m.role.upper() }}:{{ m.content.strip() }};{% endfor %}";
        let template = ChatTemplate::new(source, String::new(), String::new()).unwrap();
        assert_eq!(template.render(&[("user", "  x ")]).unwrap(), "USER:x;");
    }
}
