//! A value together with where it was written, so every later phase can point at the source.

use std::borrow::Cow;
use std::ops::Deref;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer};

/// Byte range of a node in the runbook file; `None` when the parser could not tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// 1-based line.
    pub line: u64,
    /// 1-based column (characters).
    pub column: u64,
    /// Byte offset of the node's first character.
    pub offset: Option<usize>,
}

/// A deserialized value and the position of its YAML node.
///
/// Wraps `serde_saphyr::Spanned` so that the JSON Schema of a field is the schema of the value
/// itself: positions are a property of the file, not of the format.
#[derive(Debug, Clone)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where the value was written.
    pub span: Span,
}

impl<T> Spanned<T> {
    /// A value with no known position (values synthesised by the engine, not read from a file).
    pub fn unspanned(value: T) -> Self {
        Self {
            value,
            span: Span::default(),
        }
    }
}

impl<T> Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let inner = serde_saphyr::Spanned::<T>::deserialize(deserializer)?;
        let loc = inner.referenced;
        let offset = loc
            .span()
            .byte_offset()
            .and_then(|o| usize::try_from(o).ok());
        Ok(Self {
            value: inner.value,
            span: Span {
                line: loc.line(),
                column: loc.column(),
                offset,
            },
        })
    }
}

impl<T: serde::Serialize> serde::Serialize for Spanned<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

impl<T: JsonSchema> JsonSchema for Spanned<T> {
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
    fn inline_schema() -> bool {
        T::inline_schema()
    }
}
