//! The one place that knows which YAML library reads the config file.
//!
//! It turns the library's errors into `ConfigError`s with the field path (from
//! `serde_path_to_error`) and, where the parser knows it, the line and column. Replacing the
//! YAML library means changing this file only.

use serde::de::DeserializeOwned;

use super::ConfigError;

/// Parses YAML text into `T`; an empty document means "all defaults".
pub fn parse<T: DeserializeOwned + Default>(text: &str) -> Result<T, ConfigError> {
    if text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    }) {
        return Ok(T::default());
    }
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let location = inner.location().map(|l| (l.line(), l.column()));
        let field = if path == "." { String::new() } else { path };
        ConfigError::new(field, clean_message(&inner.to_string())).at(location)
    })
}

/// serde_yaml repeats the path and the position in its message; we print both ourselves.
fn clean_message(message: &str) -> String {
    let without_position = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    // "routes[0].retry: unknown field ..." -> "unknown field ..."
    match without_position.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') => rest.to_owned(),
        _ => without_position.to_owned(),
    }
}
