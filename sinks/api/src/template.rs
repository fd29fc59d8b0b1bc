//! Templates such as `nomad.{{Topic}}.{{Type}}` that sinks use to name subjects, topics,
//! routing keys and message keys from an event's fields.
//!
//! A template is parsed once, when the configuration is loaded, so that a misspelt field
//! is a configuration error with the list of valid fields rather than a surprise at the first
//! event. Rendering is a walk over pre-split parts with no allocation beyond the output.

use crate::Envelope;
use std::fmt::Write as _;

/// The field names a template may use, in the order they are documented.
pub const TEMPLATE_FIELDS: &[&str] = &["Topic", "Type", "Key", "Namespace", "Index", "Id", "Source"];

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Topic,
    Type,
    Key,
    Namespace,
    Index,
    Id,
    Source,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(Field),
}

/// Why a template could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{Name}}` names a field events do not have.
    #[error("unknown field `{field}` in template `{template}`; valid fields are {valid}")]
    UnknownField {
        /// The unknown name.
        field: String,
        /// The whole template.
        template: String,
        /// The valid names, comma-separated.
        valid: String,
    },
    /// A `{{` without its `}}`.
    #[error("unclosed `{{{{` in template `{template}`")]
    Unclosed {
        /// The whole template.
        template: String,
    },
}

impl Template {
    /// Parses `source`, rejecting unknown fields and unclosed braces.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close =
                after.find("}}").ok_or_else(|| TemplateError::Unclosed { template: source.to_owned() })?;
            let name = after[..close].trim();
            let field = match name {
                "Topic" => Field::Topic,
                "Type" => Field::Type,
                "Key" => Field::Key,
                "Namespace" => Field::Namespace,
                "Index" => Field::Index,
                "Id" => Field::Id,
                "Source" => Field::Source,
                _ => {
                    return Err(TemplateError::UnknownField {
                        field: name.to_owned(),
                        template: source.to_owned(),
                        valid: TEMPLATE_FIELDS.join(", "),
                    });
                }
            };
            parts.push(Part::Field(field));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Template { source: source.to_owned(), parts })
    }

    /// The text the template was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the template for one event.
    pub fn render(&self, event: &Envelope) -> String {
        let mut out = String::with_capacity(self.source.len() + 32);
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Field(Field::Topic) => out.push_str(&event.topic),
                Part::Field(Field::Type) => out.push_str(&event.event_type),
                Part::Field(Field::Key) => out.push_str(&event.key),
                Part::Field(Field::Namespace) => out.push_str(&event.namespace),
                Part::Field(Field::Index) => {
                    let _ = write!(out, "{}", event.id.index);
                }
                Part::Field(Field::Id) => {
                    let _ = write!(out, "{}", event.id);
                }
                Part::Field(Field::Source) => out.push_str(&event.source),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventId;

    fn envelope() -> Envelope {
        Envelope {
            seq: 1,
            id: EventId { index: 42, digest: 0xabc, occurrence: 1 },
            source: "eu".into(),
            topic: "Allocation".into(),
            event_type: "PlanResult".into(),
            key: "a1".into(),
            namespace: "prod".into(),
            raw: bytes::Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn renders_every_field() {
        let template =
            Template::parse("nomad.{{Topic}}.{{ Type }}/{{Key}}@{{Namespace}}#{{Index}}:{{Id}}<{{Source}}")
                .expect("valid template");
        assert_eq!(
            template.render(&envelope()),
            "nomad.Allocation.PlanResult/a1@prod#42:42-0000000000000abc-1<eu"
        );
    }

    #[test]
    fn literal_only_template_renders_itself() {
        let template = Template::parse("events").expect("valid template");
        assert_eq!(template.render(&envelope()), "events");
    }

    #[test]
    fn unknown_field_names_the_valid_ones() {
        let error = Template::parse("nomad.{{Topc}}").expect_err("unknown field");
        let text = error.to_string();
        assert!(text.contains("`Topc`"), "{text}");
        assert!(text.contains("Topic, Type, Key, Namespace, Index, Id, Source"), "{text}");
    }

    #[test]
    fn unclosed_brace_is_an_error() {
        assert!(matches!(Template::parse("nomad.{{Topic"), Err(TemplateError::Unclosed { .. })));
    }
}
